"""Hard size limits for everything read from the network.

Each limit is checked against the length a peer DECLARES (a frame's varint prefix, a MessagePack string or array
header) before anything of that size is allocated, so a hostile peer cannot make a node allocate by lying.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Limits:
    """Bounds applied while decoding one message. Units are in the names."""

    max_message_bytes: int = 1 * MIB
    max_str_bytes: int = 256 * KIB
    max_bin_bytes: int = 1 * MIB
    max_array_len: int = 16_384
    max_map_len: int = 256

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_str_bytes", "max_bin_bytes", "max_array_len", "max_map_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be > 0, got {getattr(self, name)}")


# Gossip payloads: announces are small; rollout batches carry text.
GOSSIP_LIMITS = Limits(max_message_bytes=256 * KIB, max_str_bytes=128 * KIB, max_bin_bytes=128 * KIB)
# Request/response streams (peer exchange, generate).
STREAM_LIMITS = Limits()
# Tensor chunks for pairwise averaging.
TENSOR_LIMITS = Limits(max_message_bytes=9 * MIB, max_bin_bytes=8 * MIB, max_array_len=64)

MAX_VARINT_BYTES = 10
