"""Group averaging of float tensors through hivemind, from a process that may also run libp2p.

`HivemindAverager` starts `comms.hivemind_worker` as a child interpreter (hivemind and libp2p cannot share
one: both register `crypto.pb` in protobuf's default pool) and talks to it over two pipes. Calls are blocking
and meant for the trainer's thread, never the trio loop. It knows nothing about models or optimizers: it
averages lists of float tensors with the peers that share its prefix, model hash and shapes. Its byte
counters come from the kernel's counts for the TCP sockets of the child's process tree (`comms.tcp_counters`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comms.tcp_counters import TcpByteCounter, TcpCountersUnavailable
from protocols.errors import ErrorCode, SwarmError

log = logging.getLogger(__name__)
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOCKET_POLL_S = 0.5  # a closed connection keeps the bytes of the last poll that saw it


class AveragingError(SwarmError):
    """A round or a state download did not complete. `code` says why (TIMEOUT, INTERNAL, ...)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = ErrorCode(code)
        super().__init__(f"{self.code.name}: {message}")


@dataclass(frozen=True)
class AveragingSettings:
    """Where to find peers and how long to wait. `prefix` names the run; peers with another prefix, model
    hash or tensor shapes never meet (they land in different hivemind group keys / schema hashes)."""

    prefix: str = "swarm"
    initial_peers: tuple[str, ...] = ()
    host_maddrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    codec: str = "fp16"
    codec_block_size: int = 64
    target_group_size: int = 64
    min_group_size: int = 2
    matchmaking_time_s: float = 2.0
    allreduce_timeout_s: float = 30.0
    request_timeout_s: float = 3.0
    startup_timeout_s: float = 60.0
    declare_state_period_s: float = 30.0  # hivemind's default: each declaration is a DHT store to every replica
    bandwidth_mbps: float | None = None  # emulate a WAN uplink (token bucket on sent tensor bytes)


class UplinkShaper:
    """Paces sends to `mbps` megabits per second (a token bucket with no burst), shared by threads."""

    def __init__(
        self,
        mbps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`clock` and `sleep` are injectable so tests check the pacing as arithmetic, not as wall time."""
        if mbps <= 0:
            raise ValueError(f"bandwidth_mbps={mbps} must be > 0")
        self.bytes_per_s = mbps * 1e6 / 8
        self._free_at = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self, nbytes: int) -> None:
        with self._lock:
            start = max(self._clock(), self._free_at)
            self._free_at = start + nbytes / self.bytes_per_s
            until = self._free_at
        self._sleep(max(0.0, until - self._clock()))


@dataclass
class AveragingCounters:
    """Cumulative wire figures for /metrics. `bytes_*` are counted at the TCP sockets of the averaging process
    tree (hivemind's p2pd daemon carries all of it: tensor parts, matchmaking and DHT requests, libp2p framing
    and encryption): bytes the remote ends acknowledged and bytes received, as the kernel counts them.
    `payload_bytes_*` are the serialized tensor messages handed to and taken from hivemind's streams. Where
    the kernel gives no per-socket counts (`bytes_counted_at` == "tensor messages"), `bytes_*` are those."""

    bytes_sent: int = 0
    bytes_received: int = 0
    payload_bytes_sent: int = 0
    payload_bytes_received: int = 0
    bytes_counted_at: str = "tcp socket"
    parts_refused: int = 0
    rounds_ok: int = 0
    rounds_failed: int = 0


@dataclass
class AveragingResult:
    """The group's averages and who took part: `members` maps each member's peer id to the round and state
    digest it gathered (-1 and "" where it sent none)."""

    tensors: list[torch.Tensor]
    group_size: int
    peers: list[str]
    elapsed_s: float
    members: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def rounds(self) -> list[int]:
        return sorted(r for r, _ in self.members.values())


def model_hash_of(shapes: list[tuple[int, ...]], extra: str = "") -> str:
    """A short hash of the tensor schema (and any extra model identity) that goes into the group prefix."""
    text = ";".join("x".join(map(str, s)) for s in shapes) + "|" + extra
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class HivemindAverager:
    """Blocking client of one averaging child process. Use as a context manager or call `close()`."""

    def __init__(self, settings: AveragingSettings, shapes: list[tuple[int, ...]], model_hash: str) -> None:
        self.settings = settings
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.model_hash = model_hash
        self.counters = AveragingCounters()
        self.peer_id = ""
        self.visible_maddrs: list[str] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._tcp: TcpByteCounter | None = None
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._poll_lock = threading.Lock()  # polls from two threads must not publish out of order

    def __enter__(self) -> HivemindAverager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Spawn the child, start its DHT (bootstrapped from `initial_peers`) and averager."""
        r_child, w_parent = os.pipe()
        r_parent, w_child = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_PROJECT_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env.setdefault("HIVEMIND_LOGLEVEL", "ERROR")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "comms.hivemind_worker", str(r_child), str(w_child)],
            pass_fds=(r_child, w_child),
            env=env,
            cwd=str(_PROJECT_ROOT),
            start_new_session=True,  # its own process group: hivemind's DHT and p2pd children go down with it
        )
        os.close(r_child)
        os.close(w_child)
        self._start_socket_counting(self._proc.pid)
        self._to_child = Connection(w_parent, readable=False)
        self._from_child = Connection(r_parent, writable=False)
        s = self.settings
        init = {
            **s.__dict__,
            "prefix": f"{s.prefix}_{self.model_hash}",
            "shapes": self.shapes,
        }
        reply = self._call(init, timeout_s=s.startup_timeout_s + 30.0)
        self.peer_id = reply["peer_id"]
        self.visible_maddrs = list(reply["visible_maddrs"])

    def _start_socket_counting(self, pid: int) -> None:
        try:
            self._tcp = TcpByteCounter(pid)
        except (TcpCountersUnavailable, OSError) as err:
            log.warning("averaging bytes are counted as tensor messages: %s", err)
            self.counters.bytes_counted_at = "tensor messages"
            return
        self._stop_polling.clear()
        self._poller = threading.Thread(target=self._poll_sockets, name="averaging-tcp-bytes", daemon=True)
        self._poller.start()

    def _poll_sockets(self) -> None:
        while not self._stop_polling.wait(SOCKET_POLL_S):
            self._count_socket_bytes()

    def _count_socket_bytes(self) -> None:
        if self._tcp is None:
            return
        with self._poll_lock:
            try:
                totals = self._tcp.poll()
            except OSError as err:  # keep the last totals: they stay monotonic
                log.debug("could not read averaging socket counters: %s", err)
                return
            self.counters.bytes_sent, self.counters.bytes_received = totals.sent, totals.received

    def _call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self._proc is None or self._to_child is None or self._from_child is None:
            raise AveragingError(ErrorCode.INTERNAL, "averager is not started")
        with self._lock:
            try:
                self._to_child.send(request)
                deadline = time.monotonic() + timeout_s
                while not self._from_child.poll(0.2):
                    if self._proc.poll() is not None:
                        raise AveragingError(ErrorCode.INTERNAL, f"averaging process exited ({self._proc.returncode})")
                    if time.monotonic() > deadline:
                        self._kill()
                        raise AveragingError(ErrorCode.TIMEOUT, f"no answer in {timeout_s:.0f} s; process stopped")
                reply = self._from_child.recv()
            except (EOFError, OSError, BrokenPipeError) as err:
                raise AveragingError(ErrorCode.INTERNAL, f"averaging process pipe broke: {err}") from err
        counters = reply.get("counters")
        if counters:
            self.counters.payload_bytes_sent = counters["bytes_sent"]
            self.counters.payload_bytes_received = counters["bytes_received"]
            self.counters.parts_refused = counters["parts_refused"]
            if self._tcp is None:
                self.counters.bytes_sent = counters["bytes_sent"]
                self.counters.bytes_received = counters["bytes_received"]
        self._count_socket_bytes()
        if not reply.get("ok"):
            raise AveragingError(ErrorCode.INTERNAL, str(reply.get("error")))
        return reply

    def step(
        self,
        tensors: list[torch.Tensor],
        *,
        round_index: int,
        timeout_s: float,
        weight: float = 1.0,
        group_bits: str | None = None,
        digest: str = "",
    ) -> AveragingResult:
        """Average `tensors` with a group of peers; raise `AveragingError` if no round completed in time.
        `group_bits` ('0'/'1' string) pins the group key, so peers given the same bits average together;
        `digest` (of the caller's state) is gathered with `round_index` and comes back in `members`."""
        arrays = [t.detach().to(torch.float32).cpu().contiguous().numpy() for t in tensors]
        if [a.shape for a in arrays] != self.shapes:
            raise AveragingError(ErrorCode.BAD_REQUEST, "tensor shapes differ from the averager's")
        if not all(np.isfinite(a).all() for a in arrays):
            raise AveragingError(ErrorCode.BAD_REQUEST, "refusing to send tensors with NaN/Inf")
        req = {
            "op": "step",
            "tensors": arrays,
            "round": round_index,
            "weight": weight,
            "group_bits": group_bits,
            "digest": digest,
        }
        req["timeout_s"] = timeout_s
        try:
            reply = self._call(req, timeout_s=timeout_s + self.settings.allreduce_timeout_s + 15.0)
        except AveragingError:
            self.counters.rounds_failed += 1
            raise
        self.counters.rounds_ok += 1
        out = [torch.from_numpy(a) for a in reply["tensors"]]
        members = {p: (int(r), str(d)) for p, (r, d) in reply["members"].items()}
        return AveragingResult(out, reply["group_size"], reply["peers"], reply["elapsed_s"], members)

    def share_state(self, metadata: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        """Offer this state (e.g. weights + outer optimizer buffers) to peers that call `load_state`."""
        arrays = [t.detach().to(torch.float32).cpu().contiguous().numpy() for t in tensors]
        self._call({"op": "share_state", "metadata": metadata, "tensors": arrays}, timeout_s=30.0)

    def load_state(
        self, timeout_s: float, peer: str | None = None, min_step: int = 0
    ) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Download the state a peer of this run shares (`peer`, a hivemind peer id, or hivemind's choice);
        raise `AveragingError` if none did in time. From a named `peer`, a state whose metadata `step` is below
        `min_step` comes back with no tensors (they are not downloaded): ask again later."""
        req = {"op": "load_state", "timeout_s": timeout_s, "peer": peer, "min_step": min_step}
        reply = self._call(req, timeout_s=timeout_s + 15.0)
        return reply["metadata"], [torch.from_numpy(a) for a in reply["tensors"]]

    def _kill(self) -> None:
        """SIGKILL the child's whole process group (hivemind's own subprocesses included) and reap the child."""
        if self._proc is None:
            return
        self._count_socket_bytes()
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._proc.wait(timeout=10)

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop the child (politely, then by force) and reap it."""
        if self._proc is None:
            return
        self._count_socket_bytes()  # the last look: the child's sockets close with it
        try:
            if self._to_child is not None and self._proc.poll() is None:
                self._to_child.send({"op": "stop"})
        except (OSError, BrokenPipeError):
            pass
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
        for conn in (self._to_child, self._from_child):
            if conn is not None:
                conn.close()
        self._proc = None
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join(timeout=5.0)
            self._poller = None
