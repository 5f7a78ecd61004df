"""Tensor codecs: how a float tensor becomes bytes on the wire and back.

Each codec states its exact payload size (`payload_nbytes`) and its worst-case round-trip error
(`max_abs_error`); decoding always yields float32, so sums of decoded tensors accumulate in fp32. Codecs know
nothing about peers, sockets or hivemind: `comms.hivemind_compression` adapts them to hivemind's averager.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from protocols.errors import ErrorCode, ProtocolError


@dataclass(frozen=True)
class EncodedTensor:
    """A codec's output: codec name, tensor shape and the payload bytes (all that goes on the wire)."""

    codec: str
    shape: tuple[int, ...]
    payload: bytes

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class TensorCodec(ABC):
    """Contract: `decode(encode(x))` has x's shape, dtype float32, and |x - x'| <= `max_abs_error(x)`
    elementwise; `len(encode(x).payload) == payload_nbytes(x.numel())` exactly. `decode` refuses a payload of
    the wrong size or one that decodes to NaN/Inf with `ProtocolError(MALFORMED)`."""

    name: str

    @abstractmethod
    def payload_nbytes(self, numel: int) -> int: ...

    @abstractmethod
    def _encode(self, flat: torch.Tensor) -> bytes: ...

    @abstractmethod
    def _decode(self, payload: bytes, numel: int) -> torch.Tensor: ...

    @abstractmethod
    def max_abs_error(self, x: torch.Tensor) -> torch.Tensor:
        """Elementwise bound on |x - decode(encode(x))| (same shape as x)."""

    def encode(self, x: torch.Tensor) -> EncodedTensor:
        flat = x.detach().reshape(-1).to(torch.float32).cpu()
        if not bool(torch.isfinite(flat).all()):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "refusing to encode a tensor with NaN/Inf", field="tensor")
        return EncodedTensor(self.name, tuple(x.shape), self._encode(flat))

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        numel = enc.numel
        if enc.codec != self.name:
            raise ProtocolError(ErrorCode.MALFORMED, f"codec {enc.codec!r} is not {self.name!r}", field="codec")
        expected = self.payload_nbytes(numel)
        if len(enc.payload) != expected:
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"payload of {len(enc.payload)} bytes for {numel} values, expected {expected}",
                field="payload",
            )
        out = self._decode(enc.payload, numel)
        if not bool(torch.isfinite(out).all()):
            raise ProtocolError(ErrorCode.MALFORMED, "tensor decodes to NaN/Inf", field="payload")
        return out.reshape(enc.shape)


class Float32Codec(TensorCodec):
    name = "fp32"

    def payload_nbytes(self, numel: int) -> int:
        return 4 * numel

    def _encode(self, flat: torch.Tensor) -> bytes:
        return flat.numpy().astype("<f4", copy=False).tobytes()

    def _decode(self, payload: bytes, numel: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(payload, dtype="<f4").copy())

    def max_abs_error(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x, dtype=torch.float32)


class Float16Codec(TensorCodec):
    """IEEE half; values beyond its range are clamped to +-65504 (the error bound says so)."""

    name = "fp16"
    _max = 65504.0

    def payload_nbytes(self, numel: int) -> int:
        return 2 * numel

    def _encode(self, flat: torch.Tensor) -> bytes:
        return flat.clamp(-self._max, self._max).numpy().astype("<f2").tobytes()

    def _decode(self, payload: bytes, numel: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(payload, dtype="<f2").astype(np.float32))

    def max_abs_error(self, x: torch.Tensor) -> torch.Tensor:
        a = x.abs().to(torch.float32)
        rel = a * 2.0**-11 + 2.0**-25  # half an ulp (10-bit mantissa), subnormal floor
        return torch.where(a > self._max, a - self._max + rel, rel)


class BFloat16Codec(TensorCodec):
    """bfloat16 with round-to-nearest-even (torch's conversion); same range as fp32."""

    name = "bf16"

    def payload_nbytes(self, numel: int) -> int:
        return 2 * numel

    def _encode(self, flat: torch.Tensor) -> bytes:
        return flat.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2", copy=False).tobytes()

    def _decode(self, payload: bytes, numel: int) -> torch.Tensor:
        raw = torch.from_numpy(np.frombuffer(payload, dtype="<i2").copy())
        return raw.view(torch.bfloat16).to(torch.float32)

    def max_abs_error(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs().to(torch.float32) * 2.0**-8 + 2.0**-133


class _BlockAbsmaxCodec(TensorCodec):
    """Symmetric blockwise quantisation: per block of `block_size` values one scale = absmax / qmax, values
    rounded to the nearest integer in [-qmax, qmax]. The scale goes on the wire as `scale_dtype`; an fp16 scale
    is rounded up (never down, so no value of the block is clipped by a scale that got smaller) and capped at
    fp16's largest value, beyond which values are clamped to +-qmax * 65504. Error <= stored scale / 2 per
    element (plus fp32 rounding, and the clamp)."""

    qmax: int
    scale_dtype: str  # numpy dtype of the scales on the wire: "<f4" or "<f2"
    _fp16_max = 65504.0

    def __init__(self, block_size: int = 64) -> None:
        if block_size < 2:
            raise ValueError(f"block_size={block_size} must be >= 2")
        self.block_size = block_size

    @property
    def _scale_nbytes(self) -> int:
        return np.dtype(self.scale_dtype).itemsize

    def _num_blocks(self, numel: int) -> int:
        return -(-numel // self.block_size)

    def _blocks(self, flat: torch.Tensor) -> torch.Tensor:
        pad = self._num_blocks(flat.numel()) * self.block_size - flat.numel()
        return torch.nn.functional.pad(flat, (0, pad)).reshape(-1, self.block_size)

    def _scales(self, blocks: torch.Tensor) -> torch.Tensor:
        """The scales as decoded (fp32 values of what goes on the wire)."""
        scale = blocks.abs().amax(dim=1) / self.qmax
        if self.scale_dtype == "<f4":
            return scale
        exact = scale.clamp(max=self._fp16_max).numpy()
        half = exact.astype(np.float16)
        low = half.astype(np.float32) < exact
        half[low] = np.nextafter(half[low], np.float16(np.inf))
        return torch.from_numpy(half.astype(np.float32))

    def _quantize(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = self._blocks(flat)
        scale = self._scales(blocks)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(blocks / safe[:, None]).clamp(-self.qmax, self.qmax).to(torch.int8)
        return q, scale

    def _scale_bytes(self, scale: torch.Tensor) -> bytes:
        return scale.numpy().astype(self.scale_dtype).tobytes()

    def _read_scales(self, payload: bytes, nb: int) -> tuple[torch.Tensor, bytes]:
        end = self._scale_nbytes * nb
        scale = np.frombuffer(payload[:end], dtype=self.scale_dtype).astype(np.float32)
        return torch.from_numpy(scale), payload[end:]

    def max_abs_error(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1).to(torch.float32)
        scale = self._scales(self._blocks(flat))
        per = scale.repeat_interleave(self.block_size)[: flat.numel()]
        bound = per * (0.5 + 1e-5) + flat.abs() * 1e-6
        if self.scale_dtype != "<f4":
            bound = bound + (flat.abs() - self.qmax * self._fp16_max).clamp(min=0)
        return bound.reshape(x.shape)


class Int8BlockCodec(_BlockAbsmaxCodec):
    """Blockwise int8 in [-127, 127] with an fp32 scale per block (8.5 bits per value at 64-value blocks)."""

    name = "int8"
    qmax = 127
    scale_dtype = "<f4"

    def payload_nbytes(self, numel: int) -> int:
        return self._scale_nbytes * self._num_blocks(numel) + numel

    def _encode(self, flat: torch.Tensor) -> bytes:
        q, scale = self._quantize(flat)
        return self._scale_bytes(scale) + q.reshape(-1)[: flat.numel()].numpy().tobytes()

    def _decode(self, payload: bytes, numel: int) -> torch.Tensor:
        scale, rest = self._read_scales(payload, self._num_blocks(numel))
        q = torch.from_numpy(np.frombuffer(rest, dtype=np.int8).astype(np.float32))
        return q * scale.repeat_interleave(self.block_size)[:numel]


class Int4BlockCodec(_BlockAbsmaxCodec):
    """Blockwise int4 in [-7, 7], two values per byte (low nibble first), with an fp16 scale per block: 4.25
    bits per value at 64-value blocks (an fp32 scale made it 4.5 for at most 2^-10 less error per block)."""

    name = "int4"
    qmax = 7
    scale_dtype = "<f2"

    def payload_nbytes(self, numel: int) -> int:
        return self._scale_nbytes * self._num_blocks(numel) + (numel + 1) // 2

    def _encode(self, flat: torch.Tensor) -> bytes:
        q, scale = self._quantize(flat)
        nib = (q.reshape(-1)[: flat.numel()].to(torch.int16) + 8).to(torch.uint8)
        if nib.numel() % 2:
            nib = torch.cat([nib, torch.full((1,), 8, dtype=torch.uint8)])
        packed = nib[0::2] | (nib[1::2] << 4)
        return self._scale_bytes(scale) + packed.numpy().tobytes()

    def _decode(self, payload: bytes, numel: int) -> torch.Tensor:
        scale, rest = self._read_scales(payload, self._num_blocks(numel))
        packed = torch.from_numpy(np.frombuffer(rest, dtype=np.uint8).copy())
        nib = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:numel]
        return (nib.to(torch.float32) - 8.0) * scale.repeat_interleave(self.block_size)[:numel]


class TernaryBlockCodec(_BlockAbsmaxCodec):
    """Blockwise ternary ("int2"): per block of `block_size` values one magnitude m (fp16, rounded up), each value
    sent as -m, 0 or +m in 2 bits (four per byte, low bits first): 2.25 bits per value at 64-value blocks. As in
    ternary weight networks, values whose magnitude is at most 0.7 times the block's mean magnitude go to 0 and m is
    the mean magnitude of the others, which minimises the block's squared error for that threshold. Much coarser
    than int4 per exchange: meant for pseudo-gradients sent with error feedback (`training.error_feedback`), which
    carries what a round lost into the next. Error per element: | |x| - m | above the threshold, |x| under it."""

    name = "int2"
    qmax = 1
    scale_dtype = "<f2"
    threshold = 0.7

    def payload_nbytes(self, numel: int) -> int:
        return self._scale_nbytes * self._num_blocks(numel) + (numel + 3) // 4

    def _ternary(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes in {0, 1, 2} (for -m, 0, +m) per value, padded to whole blocks, and the magnitudes as decoded."""
        blocks = self._blocks(flat)
        mag = blocks.abs()
        keep = mag > self.threshold * mag.mean(dim=1, keepdim=True)
        kept = keep.sum(dim=1)
        m = torch.where(kept > 0, (mag * keep).sum(dim=1) / kept.clamp(min=1), torch.zeros_like(kept, dtype=mag.dtype))
        exact = m.clamp(max=self._fp16_max).numpy()
        half = exact.astype(np.float16)
        low = half.astype(np.float32) < exact
        half[low] = np.nextafter(half[low], np.float16(np.inf))
        codes = (torch.sign(blocks) * keep + 1).to(torch.uint8)
        return codes, torch.from_numpy(half.astype(np.float32))

    def _encode(self, flat: torch.Tensor) -> bytes:
        codes, m = self._ternary(flat)
        c = codes.reshape(-1)[: flat.numel()]
        pad = (-c.numel()) % 4
        c = torch.cat([c, torch.ones(pad, dtype=torch.uint8)]).reshape(-1, 4)
        packed = c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)
        return self._scale_bytes(m) + packed.numpy().tobytes()

    def _decode(self, payload: bytes, numel: int) -> torch.Tensor:
        m, rest = self._read_scales(payload, self._num_blocks(numel))
        packed = torch.from_numpy(np.frombuffer(rest, dtype=np.uint8).copy())
        codes = torch.stack([(packed >> k) & 0x03 for k in (0, 2, 4, 6)], dim=1).reshape(-1)[:numel]
        if bool((codes > 2).any()):  # code 3 is never sent
            return torch.full((numel,), float("nan"))
        return (codes.to(torch.float32) - 1.0) * m.repeat_interleave(self.block_size)[:numel]

    def max_abs_error(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1).to(torch.float32)
        codes, m = self._ternary(flat)
        back = (codes.to(torch.float32) - 1.0) * m[:, None]
        err = (back.reshape(-1)[: flat.numel()] - flat).abs()
        return (err * (1 + 1e-5) + flat.abs() * 1e-6).reshape(x.shape)


class ErrorFeedback:
    """Wraps a codec and keeps, per key, the residual x - decode(encode(x)) that the next encode adds back, so
    quantisation error is delayed rather than lost. Not thread-safe; one instance per sender."""

    def __init__(self, codec: TensorCodec) -> None:
        self.codec = codec
        self._residual: dict[str, torch.Tensor] = {}

    def encode(self, key: str, x: torch.Tensor) -> EncodedTensor:
        target = x.detach().to(torch.float32)
        prev = self._residual.get(key)
        if prev is not None and prev.shape == target.shape:
            target = target + prev
        enc = self.codec.encode(target)
        self._residual[key] = target - self.codec.decode(enc)
        return enc

    def residual(self, key: str) -> torch.Tensor | None:
        return self._residual.get(key)


def make_codec(name: str, block_size: int = 64) -> TensorCodec:
    """The codec called `name` (one of fp32, fp16, bf16, int8, int4, int2)."""
    if name == "fp32":
        return Float32Codec()
    if name == "fp16":
        return Float16Codec()
    if name == "bf16":
        return BFloat16Codec()
    if name == "int8":
        return Int8BlockCodec(block_size)
    if name == "int4":
        return Int4BlockCodec(block_size)
    if name == "int2":
        return TernaryBlockCodec(block_size)
    raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown codec {name!r}", field="codec")


CODEC_NAMES = ("fp32", "fp16", "bf16", "int8", "int4", "int2")
