"""The messages peers exchange, one dataclass each, documented field by field in protocols/README.md.

Membership: `PeerAnnounce` on the announce topic; peer exchange (`PeersRequest` / `PeersReply`) on
`/swarm/peers/1.0.0`; `ErrorReply` is how any stream refuses a request. Plain data: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.codec import Message, Record
from protocols.errors import ErrorCode, ProtocolError, error_code_of

MAX_ADDRS = 32
MAX_ROLES = 16
MAX_PEERS_REPLY = 256
MAX_DEVICES = 16
KNOWN_ROLES = ("serve", "train", "rl", "client")


def _bounded(name: str, items: list, limit: int) -> None:
    if len(items) > limit:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(items)} entries, limit is {limit}", field=name)


def _non_negative(record: object, *names: str) -> None:
    for name in names:
        value = getattr(record, name)
        if value < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"must be >= 0, got {value}", field=name)


@dataclass
class Hardware(Record):
    """What the peer runs on."""

    device: str = "cpu"  # "cpu", "cuda", "mps", ...
    device_name: str = ""  # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
    memory_bytes: int = 0  # accelerator memory, or system RAM on CPU
    cpu_cores: int = 0


@dataclass
class Device(Record):
    """One compute device of the peer (1.2): the CPU, each GPU. Speeds are measured (0: not measured)."""

    kind: str = "cpu"  # "cpu", "cuda", "mps", ...
    name: str = ""  # e.g. "cuda:0 NVIDIA H100 80GB HBM3" or the CPU model
    memory_bytes: int = 0
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    roles: list[str] = field(default_factory=list)  # 1.3: what the peer's placement runs here (serve, train, ...)

    def validate(self) -> None:
        _non_negative(self, "memory_bytes", "prefill_tok_s", "decode_tok_s")
        _bounded("roles", self.roles, MAX_ROLES)


LOAD_PROBE_PROMPT_TOKENS = 128  # the prompt length a Load's predicted_ttft_ms is predicted for


@dataclass
class Load(Record):
    """Serving load, filled by peers with the `serve` role (zeros otherwise)."""

    running: int = 0
    waiting: int = 0
    predicted_ttft_ms: float = 0.0
    decode_tok_s: float = 0.0
    free_kv_tokens: int = 0
    prefill_tok_s: float = 0.0  # prompt tokens/s at the current load (0: unknown, e.g. a 1.0 announce)

    def validate(self) -> None:
        _non_negative(
            self, "running", "waiting", "predicted_ttft_ms", "decode_tok_s", "free_kv_tokens", "prefill_tok_s"
        )


@dataclass
class TrainingState(Record):
    """Training progress, filled by peers with the `train` role."""

    round: int = 0
    step: int = 0
    loss: float | None = None


@dataclass
class RLState(Record):
    """Rollout-sharing progress, filled by peers with the `rl` role."""

    round: int = 0
    mean_reward: float = 0.0
    groups_received: int = 0
    groups_rejected: int = 0
    groups_used: int = 0

    def validate(self) -> None:
        _non_negative(self, "round", "groups_received", "groups_rejected", "groups_used")


@dataclass
class PeerAnnounce(Message):
    """A peer's state, published on `swarm/<swarm_id>/announce` every `heartbeat_s`."""

    TYPE = "peer_announce"
    VERSION = (1, 3)

    peer_id: str
    addrs: list[str]
    version: str
    timestamp_ms: int
    roles: list[str] = field(default_factory=list)
    model_id: str = ""
    model_hash: str = ""
    hardware: Hardware = field(default_factory=Hardware)
    load: Load = field(default_factory=Load)
    training: TrainingState = field(default_factory=TrainingState)
    hivemind_addrs: list[str] = field(default_factory=list)
    seq: int = 0
    rl: RLState | None = None
    devices: list[Device] = field(default_factory=list)  # 1.2: every device; empty from a 1.0/1.1 peer

    def validate(self) -> None:
        _bounded("devices", self.devices, MAX_DEVICES)
        if not self.peer_id:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "must not be empty", field="peer_id")
        _bounded("addrs", self.addrs, MAX_ADDRS)
        _bounded("roles", self.roles, MAX_ROLES)
        _bounded("hivemind_addrs", self.hivemind_addrs, MAX_ADDRS)
        _non_negative(self, "timestamp_ms", "seq")


@dataclass
class PeerRecord(Record):
    """A peer and where to dial it."""

    peer_id: str
    addrs: list[str]
    announce: PeerAnnounce | None = None  # the peer's full announce as the sender holds it (hearsay: unsigned)

    def validate(self) -> None:
        _bounded("addrs", self.addrs, MAX_ADDRS)
        if self.announce is not None and self.announce.peer_id != self.peer_id:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "announce of another peer", field="announce.peer_id")


@dataclass
class PeersRequest(Message):
    """Ask a peer for the peers it knows (peer exchange), up to ``limit``."""

    TYPE = "peers_request"
    VERSION = (1, 1)

    limit: int = 64
    full: bool = False  # 1.1: also send each peer's announce, serving peers first (a joiner's first view)

    def validate(self) -> None:
        if not 1 <= self.limit <= MAX_PEERS_REPLY:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"must be in [1, {MAX_PEERS_REPLY}], got {self.limit}", field="limit"
            )


@dataclass
class PeersReply(Message):
    """The answer to PeersRequest: live peers from the sender's membership table, itself excluded."""

    TYPE = "peers_reply"
    VERSION = (1, 1)

    peers: list[PeerRecord]

    def validate(self) -> None:
        _bounded("peers", self.peers, MAX_PEERS_REPLY)


@dataclass
class ErrorReply(Message):
    """A typed refusal, sent on any stream in place of the expected reply."""

    TYPE = "error"
    VERSION = (1, 0)

    code: int
    message: str = ""
    field: str | None = None
    retry_after_ms: int | None = None

    @property
    def error_code(self) -> ErrorCode:
        return error_code_of(self.code)

    @classmethod
    def from_error(cls, err: ProtocolError, retry_after_ms: int | None = None) -> ErrorReply:
        return cls(code=int(err.code), message=str(err)[:1024], field=err.field, retry_after_ms=retry_after_ms)
