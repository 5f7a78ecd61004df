"""The dashboard in a real headless Chromium: a serving node, a training node and a peer that announces script in
its model id, version and roles. The page lists all three peer ids, draws the training peer's loss curve, streams
a chat answer from /v1/chat/completions, and never runs the hostile peer's script.

Set SWARM_DASHBOARD_SCREENSHOT=docs/dashboard.png to keep the browser's screenshot (the README's picture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.browser import INSTALL_HINT, find_browser, open_page
from tests.integration.hostile_announcer import SCRIPT_MODEL_ID, SCRIPT_ROLE, SCRIPT_VERSION
from tests.integration.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(300)]

BROWSER = find_browser()
TRAIN = ("--roles", "train", "--heartbeat-s", "0.5", "--set", "training.inner_steps=5",
         "--set", "training.total_steps=100000", "--set", "training.max_corpus_bytes=100000",
         "--set", "training.eval_batches=1")  # fmt: skip
PAGE_TIMEOUT_S = 60.0
CHAT_TIMEOUT_S = 90.0


class HostilePeer:
    def __init__(self, workdir: Path, bootstrap: str) -> None:
        self.info_file = workdir / "hostile.json"
        self.log = open(workdir / "hostile.log", "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "tests.integration.hostile_announcer", str(self.info_file), bootstrap]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def peer_id(self) -> str:
        wait_until(self.info_file.exists, timeout_s=60)
        return json.loads(self.info_file.read_text())["peer_id"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[tuple[NodeProcess, list[str], str]]:
    """(the serving node whose page is opened, the three peer ids, the training peer's id)."""
    server = NodeProcess(tmp_path, "server", ["--roles", "serve", "--model", "tiny", "--heartbeat-s", "0.5",
                                              "--set", "serving.dtype=float32"])  # fmt: skip
    started: list = [server]
    try:
        server.wait_ready(timeout_s=120)
        trainer = NodeProcess(
            tmp_path,
            "trainer",
            [*TRAIN, "--peer", server.addr, "--set", f"training.checkpoint_dir={tmp_path / 'ckpt'}"],
        )
        started.append(trainer)
        hostile = HostilePeer(tmp_path, server.addr)
        started.append(hostile)
        trainer.wait_ready(timeout_s=120)
        ids = [server.peer_id, trainer.peer_id, hostile.peer_id()]
        wait_until(lambda: server.peer_ids() == set(ids), timeout_s=60)
        yield server, ids, trainer.peer_id
    finally:
        for node in started:
            node.stop()


def _loss_points(server: NodeProcess, peer_id: str) -> int:
    return len(httpx.get(f"{server.http}/v1/swarm/dashboard", timeout=5).json()["loss"].get(peer_id, []))


@pytest.mark.skipif(BROWSER is None, reason=INSTALL_HINT)
def test_dashboard_in_headless_chromium(swarm, tmp_path: Path) -> None:
    server, ids, trainer_id = swarm
    # The README's picture waits for a longer curve; the test needs a line, not a dot.
    points = 10 if os.environ.get("SWARM_DASHBOARD_SCREENSHOT") else 2
    wait_until(lambda: _loss_points(server, trainer_id) >= points, timeout_s=180, interval_s=0.5)
    found = trio.run(_drive_page, server.http, tmp_path, ids[2])

    assert all(peer_id in found["peers_text"] for peer_id in ids), found["peers_text"]
    assert found["rows"] == 3
    assert trainer_id in found["curves"]
    assert found["points"] >= 2  # a line, not a dot
    # The hostile peer's strings are on the page as text, and none of them became an element or ran.
    assert found["pwned"] is None
    assert found["hostile_cells"] == [SCRIPT_ROLE, SCRIPT_MODEL_ID, SCRIPT_VERSION]
    assert found["scripts"] == 1 and found["injected"] == 0
    # A streamed answer: several chunks, ended by the model (a stop or the length limit).
    assert found["chat"]["status"] == "done", found
    assert int(found["chat"]["chunks"]) >= 2 and len(found["chat"]["text"]) > 0
    assert found["chat"]["finish"] in ("stop", "length")
    assert found["screenshot"][:8] == b"\x89PNG\r\n\x1a\n"
    metrics = httpx.get(f"{server.http}/metrics", timeout=5).text
    assert 'vllm:request_success_total{finished_reason="' in metrics


async def _drive_page(http: str, workdir: Path, hostile_id: str) -> dict:
    found: dict = {}
    async with open_page(BROWSER, f"{http}/", workdir) as page:
        await page.wait_for("document.body.dataset.state === 'ok' && "
                            "document.querySelectorAll('#peers tbody tr').length === 3 && "
                            "document.querySelectorAll('#loss-chart polyline').length >= 1 && "
                            "document.querySelector('#chat-model').options.length >= 1", PAGE_TIMEOUT_S)  # fmt: skip
        found["peers_text"] = await page.evaluate("document.querySelector('#peers').textContent")
        found["rows"] = await page.evaluate("document.querySelectorAll('#peers tbody tr').length")
        found["curves"] = await page.evaluate(
            "[...document.querySelectorAll('#loss-chart polyline')].map(p => p.dataset.peer)"
        )
        found["points"] = await page.evaluate(
            "Math.max(...[...document.querySelectorAll('#loss-chart polyline')]"
            ".map(p => p.getAttribute('points').split(' ').length))"
        )
        found["pwned"] = await page.evaluate("window.__pwned === undefined ? null : String(window.__pwned)")
        row = f"document.querySelector('#peers tr[data-peer=\"{hostile_id}\"]')"
        found["hostile_cells"] = await page.evaluate(
            f"[{row}.children[1].textContent, {row}.children[4].textContent, {row}.children[5].textContent]"
        )
        found["scripts"] = await page.evaluate("document.scripts.length")
        found["injected"] = await page.evaluate(
            "document.querySelectorAll('#peers img, #peers svg, #peers script').length"
        )
        await page.evaluate("document.querySelector('#chat-input').value = 'def fibonacci(n):'")
        await page.evaluate("document.querySelector('#chat-send').click()")
        await page.wait_for("document.querySelector('#chat-answer').dataset.status !== 'streaming'", CHAT_TIMEOUT_S)
        found["chat"] = await page.evaluate(
            "(() => { const a = document.querySelector('#chat-answer');"
            " return {status: a.dataset.status, chunks: a.dataset.chunks, finish: a.dataset.finish,"
            " text: a.textContent, error: document.querySelector('#error').textContent}; })()"
        )
        # the next poll shows the answered request in the serving figures
        await page.wait_for("document.querySelector('[data-figure=requests] dd').textContent !== '0'", PAGE_TIMEOUT_S)
        target = os.environ.get("SWARM_DASHBOARD_SCREENSHOT")
        found["screenshot"] = await page.screenshot(Path(target) if target else workdir / "dashboard.png")
    return found


@pytest.mark.skipif(BROWSER is None, reason=INSTALL_HINT)
def test_dashboard_asks_for_the_api_key(start_node, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-dashboard\n")
    node = start_node("keyed", "--api-key-file", str(keys))
    found = trio.run(_enter_key, node.http, tmp_path)
    assert found["form_shown"] and found["rows_before"] == 0
    assert found["rows_after"] == 1 and node.peer_id in found["peers_text"]
    assert found["form_hidden_after"]


async def _enter_key(http: str, workdir: Path) -> dict:
    found: dict = {}
    async with open_page(BROWSER, f"{http}/", workdir) as page:
        found["form_shown"] = await page.wait_for("!document.querySelector('#key-form').hidden", PAGE_TIMEOUT_S)
        found["rows_before"] = await page.evaluate("document.querySelectorAll('#peers tbody tr').length")
        await page.evaluate("document.querySelector('#key-input').value = 'sk-dashboard'")
        await page.evaluate("document.querySelector('#key-form').requestSubmit()")
        await page.wait_for("document.querySelectorAll('#peers tbody tr').length === 1", PAGE_TIMEOUT_S)
        found["rows_after"] = await page.evaluate("document.querySelectorAll('#peers tbody tr').length")
        found["peers_text"] = await page.evaluate("document.querySelector('#peers').textContent")
        found["form_hidden_after"] = await page.evaluate("document.querySelector('#key-form').hidden")
    return found
