"""The soak bench's nodes: `swarm join` processes with a fixed identity and fixed ports on 127.0.0.1, so one
killed with SIGKILL and started again comes back with the same PeerID and address and the swarm heals.

Each node keeps when it was down (for the bench to tell a failed request from one nobody could serve) and reads
the resident memory of its process tree from /proc. Knows processes, ports and files, not what the nodes do.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from comms.identity import generate_identity, peer_id_of, write_identity
from swarm.bench.local_swarm import LocalPeer


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's pick for port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants (a training node's averager and daemon are children), from
    /proc; 0 when the process is gone."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        total += _rss_bytes(p)
    return total


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class SoakNode:
    """One node of the soak: name, role ("serve" or "train"), fixed ports and identity, its incarnations."""

    name: str
    role: str
    workdir: Path
    args: list[str]
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    peer: LocalPeer | None = None
    starts: int = 0
    down_since: float | None = None
    down_intervals: list[tuple[float, float]] = field(default_factory=list)
    killed: int = 0
    crashes: list[dict] = field(default_factory=list)
    last_seen_alive: float = 0.0

    def __post_init__(self) -> None:
        self.identity_path = self.workdir / f"{self.name}.key"
        key_pair = generate_identity()
        write_identity(self.identity_path, key_pair)
        self.peer_id = peer_id_of(key_pair)

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.peer.proc.pid if self.peer is not None and self.peer.proc.poll() is None else None

    def start(self, bootstrap: list[str]) -> None:
        """Start a new incarnation (its log is `<name>-<n>.log`); the node dials `bootstrap` itself."""
        local = ("--listen", f"/ip4/127.0.0.1/tcp/{self.port}", "--http", f"127.0.0.1:{self.http_port}")
        peers = [a for addr in bootstrap if addr != self.addr for a in ("--peer", addr)]
        args = ["--identity", str(self.identity_path), *peers, *self.args]
        self.peer = LocalPeer(self.workdir, f"{self.name}-{self.starts}", args, local_args=local)
        self.starts += 1

    def wait_ready(self, timeout_s: float, clock: Callable[[], float]) -> None:
        if self.peer is None:
            raise RuntimeError(f"{self.name} was never started")
        self.peer.wait_ready(timeout_s)
        if self.down_since is not None:
            self.down_intervals.append((self.down_since, clock()))
            self.down_since = None

    def kill(self, clock: Callable[[], float]) -> None:
        """SIGKILL (the process gets no chance to say goodbye) and reap it."""
        if self.peer is not None:
            self.peer.kill()
        self.killed += 1
        self.down_since = clock()

    def exited_unasked(self, clock: Callable[[], float]) -> bool:
        """True (once) when the process died without being killed here: recorded as a crash."""
        if self.peer is None or self.down_since is not None:
            return False
        if self.peer.proc.poll() is None:
            self.last_seen_alive = clock()
            return False
        lines = [line.strip(" |+-") for line in self.peer.log_tail(4000).splitlines()]
        errors = [line for line in lines if "Error" in line or "Exception" in line] or [x for x in lines if x] or [""]
        # It died after it was last seen alive and after its log's last line, not when this noticed it.
        try:
            died = clock() - max(0.0, time.time() - self.peer.log_path.stat().st_mtime)
        except OSError:
            died = clock()
        died = max(died, self.last_seen_alive)
        self.crashes.append({"t_s": round(died, 2), "returncode": self.peer.proc.returncode, "error": errors[-1]})
        self.down_since = died
        return True

    def was_down(self, at: float) -> bool:
        if self.down_since is not None and at >= self.down_since:
            return True
        return any(start <= at <= end for start, end in self.down_intervals)

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.terminate(timeout_s=10)


def all_down_during(nodes: list[SoakNode], start: float, end: float) -> bool:
    """Whether every node in `nodes` was down at one moment within [start, end]. Down spells are intervals, so
    if their intersection meets [start, end] it does at `start` or at the start of one of the spells."""
    if not nodes:
        return True
    moments = [start] + [s for n in nodes for s, _ in n.down_intervals if start <= s <= end]
    moments += [n.down_since for n in nodes if n.down_since is not None and start <= n.down_since <= end]
    return any(all(n.was_down(m) for n in nodes) for m in moments)


def wait_all_ready(nodes: list[SoakNode], timeout_s: float, clock: Callable[[], float]) -> None:
    deadline = time.monotonic() + timeout_s
    for node in nodes:
        node.wait_ready(max(1.0, deadline - time.monotonic()), clock)
