"""Real `swarm join` processes on 127.0.0.1 for the integration tests; every process is reaped."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from swarm.bench.local_swarm import LocalPeer


class NodeProcess(LocalPeer):
    """A `swarm join` child process that logs at DEBUG (its log is shown when a test fails)."""

    def __init__(self, workdir: Path, name: str, args: list[str]) -> None:
        super().__init__(workdir, name, args, log_level="DEBUG")

    def stop(self) -> None:
        self.kill()


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2) -> float:  # type: ignore[no-untyped-def]
    """Poll until ``predicate()`` is true; return the seconds it took. Raises AssertionError on timeout."""
    start = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - start < timeout_s:
        try:
            if predicate():
                return time.monotonic() - start
        except (httpx.HTTPError, KeyError, ValueError) as err:
            last_error = err
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last error: {last_error})")
