"""Hypothesis feeds the decoders arbitrary bytes: they return a valid message or raise ProtocolError, nothing else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import GOSSIP_LIMITS, FrameDecoder, Message, ProtocolError, decode, encode, message_types

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)  # fmt: skip


def _accepts_only_messages(data: bytes) -> None:
    try:
        message = decode(data, limits=GOSSIP_LIMITS)
    except ProtocolError:
        return
    assert isinstance(message, Message)
    assert decode(encode(message)) == message  # whatever is accepted re-encodes to the same message


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    _accepts_only_messages(data)


@FUZZ
@given(st.sampled_from(sorted(message_types())), st.dictionaries(st.text(max_size=16), msgpack_values, max_size=12))
def test_arbitrary_fields_under_a_real_type_tag(tag: str, fields: dict) -> None:
    body = {**fields, "type": tag, "v": [1, 0]}
    _accepts_only_messages(msgpack.packb(body, use_bin_type=True))


@FUZZ
@given(st.binary(max_size=4096), st.integers(1, 64))
def test_frame_decoder_on_arbitrary_bytes(data: bytes, step: int) -> None:
    decoder = FrameDecoder(1024)
    try:
        for i in range(0, len(data), step):
            for frame in decoder.feed(data[i : i + step]):
                assert len(frame) <= 1024
    except ProtocolError:
        pass


@pytest.mark.parametrize("tag", sorted(message_types()))
def test_every_type_tag_with_no_fields_is_refused_or_defaulted(tag: str) -> None:
    _accepts_only_messages(msgpack.packb({"type": tag, "v": [1, 0]}))
