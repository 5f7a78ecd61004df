"""Varint framing and the size limits checked before allocation."""

from __future__ import annotations

import msgpack
import pytest

from protocols import ErrorCode, FrameDecoder, Limits, PeersRequest, ProtocolError, decode, encode, encode_frame
from protocols.framing import decode_uvarint, encode_uvarint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**32, 2**63 - 1])
def test_uvarint_round_trip(value: int) -> None:
    data = encode_uvarint(value)
    assert decode_uvarint(data) == (value, len(data))
    assert decode_uvarint(data[:-1]) is None  # incomplete


def test_uvarint_known_bytes() -> None:
    assert encode_uvarint(300) == b"\xac\x02"


def test_overlong_and_non_minimal_varints_are_malformed() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_uvarint(b"\xff" * 11)
    assert info.value.code == ErrorCode.MALFORMED
    with pytest.raises(ProtocolError):
        decode_uvarint(b"\x80\x00")


def test_decoder_handles_frames_split_anywhere() -> None:
    payloads = [b"", b"a", b"x" * 1000, b"hello"]
    stream = b"".join(encode_frame(p) for p in payloads)
    for step in (1, 2, 7, 100, len(stream)):
        decoder, out = FrameDecoder(4096), []
        for i in range(0, len(stream), step):
            out += decoder.feed(stream[i : i + step])
        assert out == payloads
        assert decoder.buffered_bytes == 0


def test_oversized_frame_is_refused_from_its_prefix_alone() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(ProtocolError) as info:
        decoder.feed(encode_uvarint(10**9))  # no body sent: refused before reading any
    assert info.value.code == ErrorCode.TOO_LARGE


def test_declared_lengths_over_limits_are_refused() -> None:
    tiny = Limits(max_message_bytes=1 << 20, max_str_bytes=8, max_array_len=4)
    long_str = msgpack.packb({"type": "peers_request", "v": [1, 0], "x": "y" * 9})
    with pytest.raises(ProtocolError) as info:
        decode(long_str, limits=tiny)
    assert info.value.code == ErrorCode.TOO_LARGE
    long_array = msgpack.packb({"type": "peers_request", "v": [1, 0], "x": [0] * 5})
    with pytest.raises(ProtocolError) as info:
        decode(long_array, limits=tiny)
    assert info.value.code == ErrorCode.TOO_LARGE
    # a header that declares a 4 GB string in a 10-byte message: refused, nothing allocated
    with pytest.raises(ProtocolError):
        decode(b"\x81\xdb\xff\xff\xff\xff" + b"abcd", limits=tiny)


def test_whole_message_limit() -> None:
    data = encode(PeersRequest(limit=4))
    with pytest.raises(ProtocolError) as info:
        decode(data, limits=Limits(max_message_bytes=len(data) - 1))
    assert info.value.code == ErrorCode.TOO_LARGE


def test_trailing_bytes_are_malformed() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(encode(PeersRequest()) + b"\x00")
    assert info.value.code == ErrorCode.MALFORMED


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_array_len"):
        Limits(max_array_len=0)
