"""The per-second half of a peer's state and the on-demand load query, split from the rarely-changing PeerAnnounce.

`PeerStatus` (load, training and RL progress) goes on the `status` topic at a period that grows with the swarm;
`LoadQuery` / `LoadReply` on `/swarm/load/1.0.0` ask one serving peer its load when a router needs it fresh.
Peer-reported figures are bounded here (`check_load`), so no absurd figure gets past decoding. Plain data: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.codec import Message
from protocols.errors import ErrorCode, ProtocolError
from protocols.limits import KIB, Limits
from protocols.messages import Load, RLState, TrainingState

MAX_STATUS_PERIOD_S = 600.0  # a peer may announce a status period up to this; longer is refused
# Bounds on what a peer may report about its serving load: far above any real node, far below what would overflow
# a router's arithmetic or make one peer look infinitely better than the rest.
LOAD_BOUNDS = {
    "running": 1_000_000,
    "waiting": 1_000_000,
    "predicted_ttft_ms": 3_600_000.0,
    "decode_tok_s": 10_000_000.0,
    "free_kv_tokens": 10**12,
    "prefill_tok_s": 100_000_000.0,
}
MIN_PREDICTED_TTFT_MS = 0.0
# A load reply is a few dozen bytes; anything near this is hostile.
LOAD_LIMITS = Limits(max_message_bytes=4 * KIB, max_str_bytes=1 * KIB, max_bin_bytes=1 * KIB, max_array_len=64,
                     max_map_len=64)  # fmt: skip


def check_load(load: Load, prefix: str = "load") -> None:
    """Refuse a load with a negative figure or one past `LOAD_BOUNDS` (BAD_REQUEST naming the field)."""
    for name, bound in LOAD_BOUNDS.items():
        value = getattr(load, name)
        if not 0 <= value <= bound:
            message = f"must be in [0, {bound}], got {value}"
            raise ProtocolError(ErrorCode.BAD_REQUEST, message, field=f"{prefix}.{name}")


@dataclass
class PeerStatus(Message):
    """What changes every second: published on `swarm/<swarm_id>/status` every `period_s`; it also keeps the peer
    alive in others' tables (they expire it after a few missed periods)."""

    TYPE = "peer_status"
    VERSION = (1, 0)

    peer_id: str
    seq: int
    timestamp_ms: int
    period_s: float
    load: Load | None = None  # serving peers only
    training: TrainingState | None = None
    rl: RLState | None = None

    def validate(self) -> None:
        if not self.peer_id:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "must not be empty", field="peer_id")
        if self.seq < 0 or self.timestamp_ms < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "must be >= 0", field="seq" if self.seq < 0 else "timestamp_ms")
        if not 0 < self.period_s <= MAX_STATUS_PERIOD_S:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"must be in (0, {MAX_STATUS_PERIOD_S}], got {self.period_s}", field="period_s"
            )
        if self.load is not None:
            check_load(self.load)


@dataclass
class LoadQuery(Message):
    """Ask a serving peer for its load now (routing's power-of-d-choices sample)."""

    TYPE = "load_query"
    VERSION = (1, 0)

    model_id: str = ""  # the model the asker wants; informative only

    def validate(self) -> None:
        if len(self.model_id) > 512:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{len(self.model_id)} characters, limit is 512", field="model_id")


@dataclass
class LoadReply(Message):
    """The answer to LoadQuery: the peer's serving load now, and the model it serves."""

    TYPE = "load_reply"
    VERSION = (1, 0)

    load: Load
    model_hash: str = ""

    def validate(self) -> None:
        check_load(self.load)
        if len(self.model_hash) > 128:
            raise ProtocolError(ErrorCode.TOO_LARGE, "longer than 128 characters", field="model_hash")
