"""Group averaging of float tensors through hivemind, from a process that may also run libp2p.

`HivemindAverager` starts `comms.hivemind_worker` as a child interpreter (hivemind and libp2p cannot share
one: both register `crypto.pb` in protobuf's default pool) and talks to it over two pipes. Calls are blocking
and meant for the trainer's thread, never the trio loop. It knows nothing about models or optimizers: it
averages lists of float tensors with the peers that share its prefix, model hash and shapes; what other peers
send is bounded there (`comms.robust_average`), and states come only from a donor the caller names. Its byte
counters come from the kernel's counts for the TCP sockets of the child's process tree (`comms.tcp_counters`).
"""

from __future__ import annotations

import dataclasses
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

from comms.robust_average import bounded_weight
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
    # The private swarm key (64 hex digits): every DHT and averaging RPC then needs proof of it
    # (`comms.hivemind_auth`). Sent to the child over its pipe, never on a command line; kept out of reprs.
    swarm_key_hex: str | None = field(default=None, repr=False)
    # how reducers treat what senders claim (comms.robust_average): weights above max_weight are cut to it; a
    # part whose norm is above max_norm_ratio times the median of the group's is excluded
    max_weight: float = 1.0
    max_norm_ratio: float = 4.0


def averaging_host_maddrs(listen: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Where the averaging stack listens, given the node's libp2p listen multiaddrs: the same addresses (so the
    same interfaces) with port 0, as the node's own ports are taken. A multiaddr without an /ip4 or /ip6 part
    says no interface: it is refused rather than widened to every interface."""
    out: list[str] = []
    for text in listen:
        parts = text.strip("/").split("/")
        if len(parts) < 2 or parts[0] not in ("ip4", "ip6"):
            raise ValueError(f"cannot derive an averaging listen address from {text!r}: it names no /ip4 or /ip6")
        addr = f"/{parts[0]}/{parts[1]}/tcp/0"
        if addr not in out:
            out.append(addr)
    return tuple(out)


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
    parts_refused: int = 0  # parts this peer's reducer did not average: undecodable, bad weight, shape or norm
    swarm_key_refused: int = 0  # DHT and averaging RPCs refused for want of the swarm key, and hellos that failed
    rounds_ok: int = 0
    rounds_failed: int = 0
    restarts: int = 0  # averaging processes started again after one died or was killed on a timeout


@dataclass
class AveragingResult:
    """The group's averages and who took part: `members` maps each member's peer id to the round and state
    digest it gathered (-1 and "" where it sent none)."""

    tensors: list[torch.Tensor]
    group_size: int
    peers: list[str]
    elapsed_s: float
    members: dict[str, tuple[int, str]] = field(default_factory=dict)
    paces: dict[str, float] = field(default_factory=dict)  # seconds per inner step members claimed (checked)

    @property
    def rounds(self) -> list[int]:
        return sorted(r for r, _ in self.members.values())


def model_hash_of(shapes: list[tuple[int, ...]], extra: str = "") -> str:
    """A short hash of the tensor schema (and any extra model identity) that goes into the group prefix."""
    text = ";".join("x".join(map(str, s)) for s in shapes) + "|" + extra
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class HivemindAverager:
    """Blocking client of one averaging child process. Use as a context manager or call `close()`."""

    worker_module = "comms.hivemind_worker"  # what the child runs (tests run forged workers)

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
        # What earlier child processes counted: a restarted child counts from zero, the totals stay monotonic.
        self._carried = AveragingCounters()
        self._closed = False

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
            [sys.executable, "-m", self.worker_module, str(r_child), str(w_child)],
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
            self.counters.bytes_sent = self._carried.bytes_sent + totals.sent
            self.counters.bytes_received = self._carried.bytes_received + totals.received

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
            c, base = self.counters, self._carried
            c.payload_bytes_sent = base.payload_bytes_sent + counters["bytes_sent"]
            c.payload_bytes_received = base.payload_bytes_received + counters["bytes_received"]
            c.parts_refused = base.parts_refused + counters["parts_refused"]
            c.swarm_key_refused = base.swarm_key_refused + counters.get("swarm_key_refused", 0)
            if self._tcp is None:
                c.bytes_sent, c.bytes_received = c.payload_bytes_sent, c.payload_bytes_received
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
        pace_s: float | None = None,
        lead_delay_s: float | None = None,
    ) -> AveragingResult:
        """Average `tensors` with a group of peers; raise `AveragingError` if no round completed in time.
        `weight` (in (0, max_weight]) is this peer's share in the group's weighted mean (a peer that did part of a
        round's steps sends that fraction). `group_bits` ('0'/'1' string) pins the group key, so peers given the
        same bits average together; `digest` (of the caller's state) is gathered with `round_index` and comes back
        in `members`, and `pace_s` (seconds per inner step) in `paces`. `lead_delay_s` (in [0, matchmaking period])
        is added to the time this peer declares it will start: a peer joins a leader that declared an earlier start,
        so delays drawn per round reorder who leads and who pairs with whom among peers that arrive together
        (otherwise their arrival order, the same round after round, decides it)."""
        arrays = [t.detach().to(torch.float32).cpu().contiguous().numpy() for t in tensors]
        if [a.shape for a in arrays] != self.shapes:
            raise AveragingError(ErrorCode.BAD_REQUEST, "tensor shapes differ from the averager's")
        if not all(np.isfinite(a).all() for a in arrays):
            raise AveragingError(ErrorCode.BAD_REQUEST, "refusing to send tensors with NaN/Inf")
        if bounded_weight(weight, self.settings.max_weight) != weight:
            raise AveragingError(ErrorCode.BAD_REQUEST, f"weight {weight} is not in (0, {self.settings.max_weight}]")
        req = {
            "op": "step",
            "tensors": arrays,
            "round": round_index,
            "weight": weight,
            "group_bits": group_bits,
            "digest": digest,
            "pace_s": pace_s,
        }
        if lead_delay_s is not None:
            if not (isinstance(lead_delay_s, float) and 0.0 <= lead_delay_s <= self.settings.matchmaking_time_s):
                raise AveragingError(
                    ErrorCode.BAD_REQUEST,
                    f"lead_delay_s {lead_delay_s} is not in [0, {self.settings.matchmaking_time_s}]",
                )
            req["lead_delay_s"] = lead_delay_s
        req["timeout_s"] = timeout_s
        try:
            reply = self._call(req, timeout_s=timeout_s + self.settings.allreduce_timeout_s + 15.0)
        except AveragingError:
            self.counters.rounds_failed += 1
            raise
        self.counters.rounds_ok += 1
        out = [torch.from_numpy(a) for a in reply["tensors"]]
        members = {p: (int(r), str(d)) for p, (r, d) in reply["members"].items()}
        paces = {p: float(v) for p, v in reply.get("paces", {}).items()}
        return AveragingResult(out, reply["group_size"], reply["peers"], reply["elapsed_s"], members, paces)

    def share_state(self, metadata: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        """Offer this state (e.g. weights + outer optimizer buffers) to peers that call `load_state`."""
        arrays = [t.detach().to(torch.float32).cpu().contiguous().numpy() for t in tensors]
        self._call({"op": "share_state", "metadata": metadata, "tensors": arrays}, timeout_s=30.0)

    def load_state(
        self, timeout_s: float, peer: str, min_step: int = 0, metadata_only: bool = False
    ) -> tuple[dict[str, Any], list[torch.Tensor]]:
        """Download the state `peer` (a hivemind peer id; see `donors`) shares; raise `AveragingError` if it did not
        in time. A state whose metadata `step` is below `min_step`, or any state if `metadata_only`, comes back
        with no tensors (they are not downloaded). Metadata and tensors are the peer's claims: check them.
        (hivemind's own choice of donor, the one claiming the highest priority, is not offered: any peer can
        claim it.)"""
        req = {"op": "load_state", "timeout_s": timeout_s, "peer": peer, "min_step": min_step}
        req["metadata_only"] = metadata_only
        reply = self._call(req, timeout_s=timeout_s + 15.0)
        metadata = reply["metadata"] if isinstance(reply["metadata"], dict) else {}
        return metadata, [torch.from_numpy(a) for a in reply["tensors"]]

    def donors(self, timeout_s: float) -> list[str]:
        """Peer ids that declared they share a state (sorted; what each declared about its priority is ignored)."""
        return list(self._call({"op": "donors", "timeout_s": timeout_s}, timeout_s=timeout_s + 15.0)["donors"])

    @property
    def alive(self) -> bool:
        """Whether the averaging process runs (it is killed when it misses a deadline, and may die)."""
        return self._proc is not None and self._proc.poll() is None

    def restart(self, initial_peers: tuple[str, ...] | list[str]) -> None:
        """Start a new averaging process (bootstrapped from `initial_peers`, those of the swarm now) in place of a
        dead or killed one. Its peer id and addresses are new; the counters carry on from the old ones."""
        if self._closed:
            raise AveragingError(ErrorCode.CANCELLED, "the averager is closed")
        self._kill()
        self._release(timeout_s=0.0)
        self._carried = dataclasses.replace(self.counters)
        self.settings = dataclasses.replace(self.settings, initial_peers=tuple(initial_peers))
        self.counters.restarts += 1
        self.start()
        if self._closed:  # closed (the node stops) while this one started: it must not outlive the close
            self._kill()
            self._release(timeout_s=0.0)
            raise AveragingError(ErrorCode.CANCELLED, "the averager was closed while it restarted")

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
        """Stop the child (politely, then by force) and reap it; the averager is not restarted after this."""
        self._closed = True
        self._release(timeout_s)

    def _release(self, timeout_s: float) -> None:
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
