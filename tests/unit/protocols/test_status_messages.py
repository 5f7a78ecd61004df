"""The split membership messages: golden bytes of PeerStatus / LoadQuery / LoadReply, bounds on peer-reported load,
and a 1.0 peer exchange (no announces) still read by this version."""

from __future__ import annotations

import msgpack
import pytest

from protocols import (
    ErrorCode,
    Load,
    PeerRecord,
    PeersReply,
    PeersRequest,
    ProtocolError,
    TrainingState,
    decode,
    decode_as,
    encode,
)
from protocols.status import LOAD_BOUNDS, LOAD_LIMITS, MAX_STATUS_PERIOD_S, LoadQuery, LoadReply, PeerStatus

LOAD = Load(running=1, waiting=2, predicted_ttft_ms=12.5, decode_tok_s=100.0, free_kv_tokens=4096, prefill_tok_s=2000.0)
STATUS = PeerStatus(
    peer_id="12D3KooWexample", seq=8, timestamp_ms=1700000002000, period_s=2.0,
    load=Load(running=1, waiting=0, predicted_ttft_ms=12.5, decode_tok_s=100.0, free_kv_tokens=4096,
              prefill_tok_s=2000.0), training=TrainingState(round=3, step=31, loss=2.5),
)  # fmt: skip

GOLDEN = {
    "peer_status": (STATUS, (
        "89a474797065ab706565725f737461747573a176920100a7706565725f6964af313244334b6f6f576578616d706c65a373657108ac74"
        "696d657374616d705f6d73cf0000018bcfe56fd0a8706572696f645f73cb4000000000000000a46c6f616486a772756e6e696e6701a7"
        "77616974696e6700b17072656469637465645f747466745f6d73cb4029000000000000ac6465636f64655f746f6b5f73cb4059000000"
        "000000ae667265655f6b765f746f6b656e73cd1000ad70726566696c6c5f746f6b5f73cb409f400000000000a8747261696e696e6783"
        "a5726f756e6403a4737465701fa46c6f7373cb4004000000000000a2726cc0"
    )),
    "load_query": (LoadQuery(model_id="tiny"), (
        "83a474797065aa6c6f61645f7175657279a176920100a86d6f64656c5f6964a474696e79"
    )),
    "load_reply": (LoadReply(load=LOAD, model_hash="ab12"), (
        "84a474797065aa6c6f61645f7265706c79a176920100a46c6f616486a772756e6e696e6701a777616974696e6702b17072656469637465"
        "645f747466745f6d73cb4029000000000000ac6465636f64655f746f6b5f73cb4059000000000000ae667265655f6b765f746f6b656e73"
        "cd1000ad70726566696c6c5f746f6b5f73cb409f400000000000aa6d6f64656c5f68617368a461623132"
    )),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes_and_round_trip(name: str) -> None:
    message, hex_bytes = GOLDEN[name]
    assert encode(message).hex() == hex_bytes
    assert decode(bytes.fromhex(hex_bytes)) == message


def test_status_is_a_fraction_of_the_announce() -> None:
    from tests.unit.protocols.test_messages import ANNOUNCE

    assert len(encode(STATUS)) < 0.6 * len(encode(ANNOUNCE))


@pytest.mark.parametrize("name", sorted(LOAD_BOUNDS))
def test_absurd_load_figures_are_refused_naming_the_field(name: str) -> None:
    body = msgpack.unpackb(encode(LoadReply(load=LOAD)))
    body["load"][name] = LOAD_BOUNDS[name] * 10 + 1
    with pytest.raises(ProtocolError) as err:
        decode_as(msgpack.packb(body), LoadReply, limits=LOAD_LIMITS)
    assert err.value.code == ErrorCode.BAD_REQUEST and err.value.field == f"load.{name}"
    body["load"][name] = -1
    with pytest.raises(ProtocolError):
        decode_as(msgpack.packb(body), LoadReply, limits=LOAD_LIMITS)


@pytest.mark.parametrize("period", [0.0, -1.0, MAX_STATUS_PERIOD_S * 2])
def test_status_period_out_of_bounds_is_refused(period: float) -> None:
    body = msgpack.unpackb(encode(STATUS))
    body["period_s"] = period
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(body))
    assert err.value.field == "period_s"


def test_oversized_load_reply_is_refused_before_decoding() -> None:
    big = encode(LoadReply(load=LOAD, model_hash="x" * 100)) + b"\x00" * 5000
    with pytest.raises(ProtocolError) as err:
        decode_as(big, LoadReply, limits=LOAD_LIMITS)
    assert err.value.code == ErrorCode.TOO_LARGE


def test_a_1_0_peer_exchange_still_decodes() -> None:
    """A 1.0 peer sends no `full` flag and records without announces: both read as their defaults."""
    old_request = msgpack.packb({"type": "peers_request", "v": [1, 0], "limit": 16})
    assert decode(old_request) == PeersRequest(limit=16, full=False)
    old_reply = msgpack.packb(
        {"type": "peers_reply", "v": [1, 0], "peers": [{"peer_id": "12D3KooWexample", "addrs": []}]}
    )
    assert decode(old_reply) == PeersReply(peers=[PeerRecord(peer_id="12D3KooWexample", addrs=[], announce=None)])


def test_a_record_carrying_another_peers_announce_is_refused() -> None:
    from tests.unit.protocols.test_messages import ANNOUNCE

    body = msgpack.unpackb(encode(PeersReply(peers=[PeerRecord("12D3KooWother", [], ANNOUNCE)])))
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(body))
    assert err.value.field == "announce.peer_id"
