"""Start real `swarm join` processes on 127.0.0.1 and talk to them over HTTP; every process is reaped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

SWARM = [sys.executable, "-c", "from swarm.cli import main; main()"]


class NodeProcess:
    """One `swarm join` child process."""

    def __init__(self, workdir: Path, name: str, args: list[str]) -> None:
        self.name = name
        self.info_file = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            *SWARM,
            "join",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
            "--info-file",
            str(self.info_file),
            "--log-level",
            "DEBUG",
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir)
        self.info: dict[str, Any] = {}

    def wait_ready(self, timeout_s: float = 30.0) -> NodeProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            if self.info_file.exists():
                self.info = json.loads(self.info_file.read_text())
                return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s:\n{self.log()}")

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    @property
    def http(self) -> str:
        return self.info["http"]

    def peers(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.http}/v1/swarm/peers", timeout=5.0).json()

    def peer_ids(self) -> set[str]:
        return {p["peer_id"] for p in self.peers()}

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


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


__all__ = ["NodeProcess", "signal", "wait_until"]
