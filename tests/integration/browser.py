"""Headless Chromium driven over the Chrome DevTools Protocol (one websocket), for the dashboard tests: open a
page, evaluate JavaScript in it, wait for a condition, take a screenshot. Knows browsers, not swarms.

Finds Debian's `chromium` (or Chrome) on PATH, or the binary named by $SWARM_BROWSER; `find_browser()` returns
None when there is none, and `INSTALL_HINT` says how to get one.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = (
    "no headless browser found: install Debian's chromium (`apt-get update && apt-get install -y chromium`), "
    "or set SWARM_BROWSER to a Chromium/Chrome binary"
)
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 64 << 20  # a full-page screenshot, base64


def find_browser() -> str | None:
    named = os.environ.get("SWARM_BROWSER")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class BrowserError(Exception):
    """The browser did not start, or a page call failed."""


class Page:
    """One tab, attached through the browser's websocket with its own CDP session."""

    def __init__(self, ws: WebSocketConnection, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self._next_id = 0
        self._replies: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.exceptions: list[str] = []  # uncaught page errors, for failure messages

    async def read_loop(self) -> None:
        while True:
            data = json.loads(await self.ws.get_message())
            if "id" in data:
                channel = self._replies.pop(data["id"], None)
                if channel is not None:
                    channel.send_nowait(data)
            elif data.get("method") == "Runtime.exceptionThrown" and len(self.exceptions) < 100:
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(str(details.get("exception", {}).get("description") or details.get("text")))

    async def call(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> Any:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if not browser:
            message["sessionId"] = self.session_id
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._replies[self._next_id] = send
        await self.ws.send_message(json.dumps(message))
        with trio.fail_after(CALL_TIMEOUT_S):
            reply = await receive.receive()
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                      "awaitPromise": True})  # fmt: skip
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float, interval_s: float = 0.25) -> Any:
        """Evaluate until truthy; raises BrowserError naming the expression after `timeout_s`."""
        with trio.move_on_after(timeout_s):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await trio.sleep(interval_s)
        raise BrowserError(f"{expression!r} still false after {timeout_s:.0f} s; page errors: {self.exceptions}")

    async def screenshot(self, path: Path) -> bytes:
        png = base64.b64decode((await self.call("Page.captureScreenshot", {"format": "png"}))["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png


def _launch(binary: str, profile: Path, width: int, height: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start the browser on a free debugging port; returns the process and its browser websocket URL."""
    args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            "about:blank"]  # fmt: skip
    with open(profile.parent / f"{profile.name}.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrowserError(f"{binary} exited with {proc.returncode}; see {profile.name}.log")
        lines = port_file.read_text().split("\n") if port_file.exists() else []
        if len(lines) >= 2 and lines[1]:
            return proc, f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        time.sleep(0.1)
    proc.kill()
    raise BrowserError(f"{binary} opened no debugging port in {START_TIMEOUT_S:.0f} s")


@asynccontextmanager
async def open_page(binary: str, url: str, workdir: Path, *, width: int = 1400, height: int = 1100
                    ) -> AsyncIterator[Page]:  # fmt: skip
    """A fresh headless browser (its own profile under `workdir`) showing `url`; killed on exit."""
    profile = workdir / "browser-profile"
    profile.mkdir(parents=True, exist_ok=True)
    proc, ws_url = _launch(binary, profile, width, height)
    try:
        async with open_websocket_url(ws_url, max_message_size=MAX_MESSAGE_BYTES) as ws, trio.open_nursery() as nursery:
            page = Page(ws, "")
            nursery.start_soon(page.read_loop)
            target = await page.call("Target.createTarget", {"url": "about:blank"}, browser=True)
            attached = await page.call("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
                                       browser=True)  # fmt: skip
            page.session_id = attached["sessionId"]
            await page.call("Runtime.enable")
            await page.call("Page.enable")
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            await page.call("Emulation.setDeviceMetricsOverride", metrics)
            await page.call("Page.navigate", {"url": url})
            await page.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
                                START_TIMEOUT_S)  # fmt: skip
            yield page
            nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait(timeout=10)
