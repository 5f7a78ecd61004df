"""`swarm join --roles train` processes: they find each other's averaging DHT through gossip, average every
round (bytes counted in /metrics), show round/step/loss to `swarm status`, and leave cleanly on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import httpx
import pytest

from tests.integration.nodes import wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(240)]

# started together: the first step waits for the other node (a node alone would not wait for a group)
TRAIN = ("--roles", "train", "--heartbeat-s", "1", "--peer-timeout-s", "6",
         "--set", "training.inner_steps=5", "--set", "training.total_steps=1000",
         "--set", "training.max_corpus_bytes=100000", "--set", "training.eval_batches=1",
         "--set", "training.start_peers=1")  # fmt: skip


def _averaging_bytes(http: str) -> float:
    text = httpx.get(f"{http}/metrics", timeout=5).text
    match = re.search(r'swarm_bytes_out_total\{channel="averaging"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def test_two_training_nodes_average_and_report_progress(start_node, tmp_path) -> None:
    a = start_node("a", *TRAIN, "--set", f"training.checkpoint_dir={tmp_path / 'ca'}")
    b = start_node("b", *TRAIN, "--peer", a.addr, "--set", f"training.checkpoint_dir={tmp_path / 'cb'}")

    def rounds() -> list[int]:
        rows = b.peers()
        return [r["training"]["round"] for r in rows if "train" in r["roles"]]

    wait_until(lambda: len(rounds()) == 2 and min(rounds()) >= 2, timeout_s=150, interval_s=1.0)
    rows = a.peers()
    assert all(r["training"]["loss"] is not None and r["training"]["step"] >= 10 for r in rows)
    assert _averaging_bytes(a.http) > 0 and _averaging_bytes(b.http) > 0
    assert 'swarm_refused_messages_total{code="AVERAGING_PART"} 0.0' in httpx.get(f"{a.http}/metrics").text
    for node in (a, b):
        node.signal(signal.SIGTERM)
        assert node.proc.wait(timeout=60) == 0  # a clean exit, however long a busy machine takes to get there

    # What the swarm trained is what a node serves: the newest checkpoint directory loads in the engine.
    newest = sorted(p for p in (tmp_path / "ca").iterdir() if p.name.startswith("round-"))[-1]
    out = subprocess.run(
        [sys.executable, "-m", "swarm", "generate", "def ", "--model", str(newest), "--max-new-tokens", "4",
         "--device", "cpu", "--json"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(json.loads(out.stdout)["token_ids"]) == 4
