"""Unsigned-varint length-prefixed frames, the framing of every libp2p stream the node speaks.

A frame is `uvarint(len(payload)) || payload`, as in multiformats' unsigned-varint. This module knows bytes only:
no sockets, no message types. The incremental decoder refuses a declared length over its limit before reading
the body, so an oversized frame costs the node nothing.
"""

from __future__ import annotations

from protocols.errors import ErrorCode, ProtocolError
from protocols.limits import MAX_VARINT_BYTES


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned LEB128 varint."""
    if value < 0:
        raise ValueError(f"uvarint must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``offset``. Returns ``(value, bytes_used)``, or None if more bytes are needed.

    Raises ProtocolError(MALFORMED) for a varint longer than 10 bytes or a non-minimal encoding.
    """
    value = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        if offset + i >= len(data):
            return None
        byte = data[offset + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise ProtocolError(ErrorCode.MALFORMED, "non-minimal varint length prefix")
            return value, i + 1
        shift += 7
    raise ProtocolError(ErrorCode.MALFORMED, f"varint length prefix longer than {MAX_VARINT_BYTES} bytes")


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length."""
    return encode_uvarint(len(payload)) + payload


class FrameDecoder:
    """Incremental frame decoder: feed bytes as they arrive, take complete payloads out.

    ``max_frame_bytes`` bounds a single payload; the declared length is checked as soon as the prefix is read.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes <= 0:
            raise ValueError(f"max_frame_bytes must be > 0, got {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read, once its prefix is known

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return every payload completed by them (possibly none)."""
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                decoded = decode_uvarint(self._buf)
                if decoded is None:
                    return frames
                length, used = decoded
                if length > self.max_frame_bytes:
                    raise ProtocolError(
                        ErrorCode.TOO_LARGE,
                        f"frame declares {length} bytes, limit is {self.max_frame_bytes}",
                    )
                del self._buf[:used]
                self._need = length
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    def missing_bytes(self) -> int:
        """How many more bytes the frame in progress needs (1 while its prefix is incomplete)."""
        if self._need is None:
            return 1
        return max(self._need - len(self._buf), 0)
