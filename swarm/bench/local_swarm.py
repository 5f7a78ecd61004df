"""Real `swarm join` processes on this machine, for the demo, the swarm benches and the integration tests.

Each peer writes its PeerID, multiaddrs and HTTP URL to an info file once it listens; every process started
here is stopped (SIGTERM, then SIGKILL) by the owner. Knows processes and files, not what the peers do.
"""

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

LOCAL_ARGS = ("--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0")


class LocalPeer:
    """One `swarm join` child process listening on 127.0.0.1 (libp2p and HTTP on free ports)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        args: list[str],
        log_level: str = "INFO",
        local_args: tuple[str, ...] = LOCAL_ARGS,
        env: dict[str, str] | None = None,
    ) -> None:
        """`local_args`: where it listens (free ports by default; fixed ones let a restarted peer keep its address);
        `env`: variables added to this process's environment (thread counts)."""
        self.name = name
        self.info_file = Path(workdir) / f"{name}.json"
        self.log_path = Path(workdir) / f"{name}.log"
        self.info_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "swarm", "join", *local_args, "--info-file", str(self.info_file),
               "--log-level", log_level, *args]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.info: dict[str, Any] = {}

    def wait_ready(self, timeout_s: float = 60.0) -> LocalPeer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.info_file.exists():
                self.info = json.loads(self.info_file.read_text())
                return self
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    @property
    def addr(self) -> str:
        return self.info["addrs"][0]

    @property
    def peer_id(self) -> str:
        return self.info["peer_id"]

    @property
    def http(self) -> str:
        return self.info["http"]

    def peers(self, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        return httpx.get(f"{self.http}/v1/swarm/peers", timeout=timeout_s).json()

    def peer_ids(self) -> set[str]:
        return {p["peer_id"] for p in self.peers()}

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def terminate(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, wait; SIGKILL if it is still there. Returns the exit code of the SIGTERM, or None."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float) -> int | None:
        """Wait for the process to exit; SIGKILL it after ``timeout_s``. Returns its exit code, or None if killed."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def stop_all(peers: list[LocalPeer], timeout_s: float = 5.0) -> list[int | None]:
    """SIGTERM every peer at once, then collect exit codes (None for one that had to be killed)."""
    for peer in peers:
        peer.signal(signal.SIGTERM)
    return [peer.wait_exit(timeout_s) for peer in peers]
