"""Our tensor codecs as a hivemind compression, with payload byte counters and refusal of bad parts.

hivemind's all-reduce decodes every incoming part through its module-level registry keyed by the
`CompressionType` enum, so the reducer side can only use a codec registered there. `install` puts one
`SwarmCodecCompression` in the BLOCKWISE_8BIT slot (whose own implementation needs bitsandbytes, which the
node does not ship). It runs only inside the dedicated averaging process (`comms.hivemind_worker`), is
idempotent, and checks the registry's shape so that a hivemind upgrade fails loudly, not silently. This
module knows nothing about training: it moves float tensors.
"""

from __future__ import annotations

import multiprocessing as mp

import torch
from hivemind.compression import CompressionBase, CompressionInfo
from hivemind.compression import serialization as hm_serialization
from hivemind.proto import runtime_pb2

from comms.averaging import UplinkShaper
from comms.codecs import EncodedTensor, TensorCodec, make_codec
from protocols.errors import ProtocolError

SLOT = "BLOCKWISE_8BIT"
# r2: reducers return the encoded average, not `average - sender's part` (comms.hivemind_worker); r3: int4
# scales are fp16. Peers on another revision refuse each other's parts instead of misreading them
DTYPE_PREFIX = "swarm:r3:"

# indices into the shared counter array
SENT, RECEIVED, REFUSED = 0, 1, 2


class SwarmCodecCompression(CompressionBase):
    """hivemind `CompressionBase` backed by a `TensorCodec`. Counts, in a fork-shared array, the serialized
    size of every tensor message it produces (payload this process sends) and consumes (payload it receives),
    and the parts refused (here: wrong codec, wrong size, NaN/Inf, and hivemind then bans that sender for the
    round; or by the reducer, `count_refused`).
    What crosses the sockets is counted by the kernel (`comms.tcp_counters`)."""

    compression_type = getattr(runtime_pb2.CompressionType, SLOT)

    def __init__(self, codec: TensorCodec, block_size: int, bandwidth_mbps: float | None = None) -> None:
        self.codec = codec
        self.shaper = UplinkShaper(bandwidth_mbps) if bandwidth_mbps else None
        self.block_size = block_size
        self.counters = mp.get_context("fork").Array("q", 3)
        self._tag = f"{DTYPE_PREFIX}{codec.name}:{block_size}"

    def _add(self, index: int, amount: int) -> None:
        with self.counters.get_lock():
            self.counters[index] += amount

    def compress(self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False) -> runtime_pb2.Tensor:
        enc = self.codec.encode(tensor)
        msg = runtime_pb2.Tensor(
            buffer=enc.payload,
            size=list(enc.shape),
            dtype=self._tag,
            compression=self.compression_type,
            requires_grad=False,
        )
        self._add(SENT, msg.ByteSize())
        if self.shaper is not None:
            self.shaper.wait(msg.ByteSize())
        return msg

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        try:
            if serialized_tensor.dtype != self._tag:
                raise ValueError(f"part encoded as {serialized_tensor.dtype!r}, this swarm uses {self._tag!r}")
            enc = EncodedTensor(self.codec.name, tuple(serialized_tensor.size), serialized_tensor.buffer)
            out = self.codec.decode(enc)
        except (ProtocolError, ValueError) as err:
            self._add(REFUSED, 1)
            raise ValueError(f"refused a tensor part: {err}") from err
        self._add(RECEIVED, serialized_tensor.ByteSize())
        return out

    def count_refused(self) -> None:
        """Count one part refused after decoding (the reducer excluded it: weight, shape, NaN/Inf or norm)."""
        self._add(REFUSED, 1)

    def roundtrip(self, tensor: torch.Tensor) -> torch.Tensor:
        """What a peer decodes from `compress(tensor)`, without counting or pacing bytes (nothing is sent)."""
        return self.codec.decode(self.codec.encode(tensor))

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        numel = max(1, info.descriptor.numel())
        return self.codec.payload_nbytes(numel) / (4.0 * numel)

    def snapshot(self) -> dict[str, int]:
        with self.counters.get_lock():
            return {
                "bytes_sent": int(self.counters[SENT]),
                "bytes_received": int(self.counters[RECEIVED]),
                "parts_refused": int(self.counters[REFUSED]),
            }


def install(codec_name: str, block_size: int, bandwidth_mbps: float | None = None) -> SwarmCodecCompression:
    """Register our codec in hivemind's decoder registry (this process only) and return the compression."""
    registry = hm_serialization._BASE_COMPRESSION_TYPES
    if SLOT not in registry or set(registry) != set(runtime_pb2.CompressionType.keys()):
        raise RuntimeError("hivemind's compression registry changed shape; comms.hivemind_compression needs review")
    compression = SwarmCodecCompression(make_codec(codec_name, block_size), block_size, bandwidth_mbps)
    registry[SLOT] = compression
    return compression
