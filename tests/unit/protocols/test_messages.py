"""Round-trip and golden-bytes tests of every message, and strict validation of decoded fields."""

from __future__ import annotations

import dataclasses
import math

import msgpack
import pytest

from protocols import (
    Device,
    ErrorCode,
    ErrorReply,
    Hardware,
    Load,
    PeerAnnounce,
    PeerRecord,
    PeersReply,
    PeersRequest,
    ProtocolError,
    TrainingState,
    decode,
    decode_as,
    encode,
    message_types,
)
from protocols.messages import MAX_DEVICES, MAX_ROLES

ADDR = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWexample"
ANNOUNCE = PeerAnnounce(
    peer_id="12D3KooWexample", addrs=[ADDR], version="0.1.0", timestamp_ms=1700000000000, roles=["serve"],
    model_id="default", model_hash="ab12", hardware=Hardware(device="cpu", device_name="x", memory_bytes=1024,
    cpu_cores=2), load=Load(running=1, waiting=2, predicted_ttft_ms=12.5, decode_tok_s=100.0, free_kv_tokens=4096,
    prefill_tok_s=2000.0),
    training=TrainingState(round=3, step=30, loss=2.5), hivemind_addrs=[], seq=7,
)  # fmt: skip

GOLDEN = {
    "announce": (ANNOUNCE, (
        "de0010a474797065ad706565725f616e6e6f756e6365a176920103a7706565725f6964af313244334b6f6f576578616d706c65a5616464"
        "727391d92b2f6970342f3132372e302e302e312f7463702f343030312f7032702f313244334b6f6f576578616d706c65a776657273696f"
        "6ea5302e312e30ac74696d657374616d705f6d73cf0000018bcfe56800a5726f6c657391a57365727665a86d6f64656c5f6964a7646566"
        "61756c74aa6d6f64656c5f68617368a461623132a8686172647761726584a6646576696365a3637075ab6465766963655f6e616d65a178"
        "ac6d656d6f72795f6279746573cd0400a96370755f636f72657302a46c6f616486a772756e6e696e6701a777616974696e6702b1707265"
        "6469637465645f747466745f6d73cb4029000000000000ac6465636f64655f746f6b5f73cb4059000000000000ae667265655f6b765f74"
        "6f6b656e73cd1000ad70726566696c6c5f746f6b5f73cb409f400000000000a8747261696e696e6783a5726f756e6403a4737465701ea4"
        "6c6f7373cb4004000000000000ae686976656d696e645f616464727390a373657107a2726cc0a76465766963657390"
    )),
    "peers_request": (PeersRequest(limit=16), (
        "84a474797065ad70656572735f72657175657374a176920101a56c696d697410a466756c6cc2"
    )),
    "peers_reply": (PeersReply(peers=[PeerRecord(peer_id="12D3KooWexample", addrs=[ADDR])]), (
        "83a474797065ab70656572735f7265706c79a176920101a570656572739183a7706565725f6964af313244334b6f6f576578616d706c"
        "65a5616464727391d92b2f6970342f3132372e302e302e312f7463702f343030312f7032702f313244334b6f6f576578616d706c65"
        "a8616e6e6f756e6365c0"
    )),
    "error": (ErrorReply(code=2, message="busy", field=None, retry_after_ms=250), (
        "86a474797065a56572726f72a176920100a4636f646502a76d657373616765a462757379a56669656c64c0ae72657472795f6166746572"
        "5f6d73ccfa"
    )),
}  # fmt: skip


# Bytes a 1.0 peer announces (no prefill_tok_s): they still decode, the rate taking its default, 0 (unknown).
ANNOUNCE_1_0_HEX = (
        "8ea474797065ad706565725f616e6e6f756e6365a176920100a7706565725f6964af313244334b6f6f576578616d706c65a561646472"
        "7391d92b2f6970342f3132372e302e302e312f7463702f343030312f7032702f313244334b6f6f576578616d706c65a776657273696f"
        "6ea5302e312e30ac74696d657374616d705f6d73cf0000018bcfe56800a5726f6c657391a57365727665a86d6f64656c5f6964a76465"
        "6661756c74aa6d6f64656c5f68617368a461623132a8686172647761726584a6646576696365a3637075ab6465766963655f6e616d65"
        "a178ac6d656d6f72795f6279746573cd0400a96370755f636f72657302a46c6f616485a772756e6e696e6701a777616974696e6702b1"
        "7072656469637465645f747466745f6d73cb4029000000000000ac6465636f64655f746f6b5f73cb4059000000000000ae667265655f"
        "6b765f746f6b656e73cd1000a8747261696e696e6783a5726f756e6403a4737465701ea46c6f7373cb4004000000000000ae68697665"
        "6d696e645f616464727390a373657107"
)  # fmt: skip


# Bytes a 1.1 peer announces (no devices list): they still decode, with no devices.
ANNOUNCE_1_1_HEX = (
    "8fa474797065ad706565725f616e6e6f756e6365a176920101a7706565725f6964af313244334b6f6f576578616d706c65a56164647273"
    "91d92b2f6970342f3132372e302e302e312f7463702f343030312f7032702f313244334b6f6f576578616d706c65a776657273696f6ea5"
    "302e312e30ac74696d657374616d705f6d73cf0000018bcfe56800a5726f6c657391a57365727665a86d6f64656c5f6964a76465666175"
    "6c74aa6d6f64656c5f68617368a461623132a8686172647761726584a6646576696365a3637075ab6465766963655f6e616d65a178ac6d"
    "656d6f72795f6279746573cd0400a96370755f636f72657302a46c6f616486a772756e6e696e6701a777616974696e6702b17072656469"
    "637465645f747466745f6d73cb4029000000000000ac6465636f64655f746f6b5f73cb4059000000000000ae667265655f6b765f746f6b"
    "656e73cd1000ad70726566696c6c5f746f6b5f73cb409f400000000000a8747261696e696e6783a5726f756e6403a4737465701ea46c6f"
    "7373cb4004000000000000ae686976656d696e645f616464727390a373657107a2726cc0"
)  # fmt: skip


# Bytes a 1.2 peer announces (devices without roles): they still decode, each device with no roles.
ANNOUNCE_1_2_HEX = (
    "de0010a474797065ad706565725f616e6e6f756e6365a176920102a7706565725f6964af313244334b6f6f576578616d706c65a561646472"
    "7391d92b2f6970342f3132372e302e302e312f7463702f343030312f7032702f313244334b6f6f576578616d706c65a776657273696f6ea5"
    "302e312e30ac74696d657374616d705f6d73cf0000018bcfe56800a5726f6c657391a57365727665a86d6f64656c5f6964a764656661756c"
    "74aa6d6f64656c5f68617368a461623132a8686172647761726584a6646576696365a3637075ab6465766963655f6e616d65a178ac6d656d"
    "6f72795f6279746573cd0400a96370755f636f72657302a46c6f616486a772756e6e696e6701a777616974696e6702b17072656469637465"
    "645f747466745f6d73cb4029000000000000ac6465636f64655f746f6b5f73cb4059000000000000ae667265655f6b765f746f6b656e73cd"
    "1000ad70726566696c6c5f746f6b5f73cb409f400000000000a8747261696e696e6783a5726f756e6403a4737465701ea46c6f7373cb4004"
    "000000000000ae686976656d696e645f616464727390a373657107a2726cc0a7646576696365739185a46b696e64a463756461a46e616d65"
    "a8637564613a302058ac6d656d6f72795f6279746573cf0000001400000000ad70726566696c6c5f746f6b5f73cb40c1940000000000ac64"
    "65636f64655f746f6b5f73cb4079000000000000"
)  # fmt: skip


def test_a_1_2_announce_still_decodes_with_devices_without_roles() -> None:
    device = Device("cuda", "cuda:0 X", 80 << 30, 9000.0, 400.0)
    assert decode(bytes.fromhex(ANNOUNCE_1_2_HEX)) == dataclasses.replace(ANNOUNCE, devices=[device])
    assert device.roles == []


def test_device_roles_are_bounded() -> None:
    placed = dataclasses.replace(ANNOUNCE, devices=[Device("cpu", "x", 1, roles=["serve", "train", "cpu_work"])])
    assert decode(encode(placed)) == placed
    body = msgpack.unpackb(encode(placed))
    body["devices"][0]["roles"] = ["serve"] * (MAX_ROLES + 1)
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(body))
    assert err.value.code is ErrorCode.TOO_LARGE and err.value.field.endswith("roles")


def test_a_1_1_announce_still_decodes_without_devices() -> None:
    assert decode(bytes.fromhex(ANNOUNCE_1_1_HEX)) == ANNOUNCE


def test_devices_are_validated_and_bounded() -> None:
    with_device = dataclasses.replace(ANNOUNCE, devices=[Device("cuda", "cuda:0 X", 80 << 30, 9000.0, 400.0)])
    assert decode(encode(with_device)) == with_device
    body = msgpack.unpackb(encode(with_device))
    body["devices"][0]["memory_bytes"] = -1
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(body))
    assert err.value.field.endswith("memory_bytes")
    body["devices"] = [dict(body["devices"][0], memory_bytes=1)] * (MAX_DEVICES + 1)
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(body))
    assert err.value.code is ErrorCode.TOO_LARGE and err.value.field == "devices"


def test_a_1_0_announce_still_decodes_without_a_prefill_rate() -> None:
    old = decode(bytes.fromhex(ANNOUNCE_1_0_HEX))
    assert old == dataclasses.replace(ANNOUNCE, load=dataclasses.replace(ANNOUNCE.load, prefill_tok_s=0.0))


def test_a_negative_prefill_rate_is_refused_naming_the_field() -> None:
    body = msgpack.unpackb(encode(ANNOUNCE))
    body["load"]["prefill_tok_s"] = -1.0
    with pytest.raises(ProtocolError) as err:
        decode(msgpack.packb(body))
    assert err.value.field.endswith("prefill_tok_s")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes(name: str) -> None:
    message, hex_bytes = GOLDEN[name]
    assert encode(message).hex() == hex_bytes
    assert decode(bytes.fromhex(hex_bytes)) == message


def test_every_registered_message_has_a_golden_test() -> None:
    from tests.unit.protocols.test_generate_messages import GOLDEN as GENERATE_GOLDEN
    from tests.unit.protocols.test_rollouts import GOLDEN as ROLLOUT_GOLDEN
    from tests.unit.protocols.test_status_messages import GOLDEN as STATUS_GOLDEN

    goldens = [*GOLDEN.values(), *GENERATE_GOLDEN.values(), *ROLLOUT_GOLDEN.values(), *STATUS_GOLDEN.values()]
    covered = {type(m).TYPE for m, _ in goldens}
    assert covered == set(message_types())


@pytest.mark.parametrize("message", [m for m, _ in GOLDEN.values()], ids=lambda m: type(m).__name__)
def test_round_trip(message) -> None:
    assert decode(encode(message)) == message


def _body(**changes):
    body = msgpack.unpackb(encode(ANNOUNCE))
    body.update(changes)
    return msgpack.packb(body)


def test_unknown_fields_are_ignored() -> None:
    assert decode(_body(future_field={"x": 1})) == ANNOUNCE


def test_newer_minor_version_is_accepted_other_major_refused() -> None:
    assert decode(_body(v=[1, 7])) == ANNOUNCE
    with pytest.raises(ProtocolError) as info:
        decode(_body(v=[2, 0]))
    assert info.value.code == ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("changes", "field", "code"),
    [
        ({"peer_id": 5}, "peer_id", ErrorCode.MALFORMED),
        ({"addrs": "x"}, "addrs", ErrorCode.MALFORMED),
        ({"addrs": [1]}, "addrs[0]", ErrorCode.MALFORMED),
        ({"timestamp_ms": True}, "timestamp_ms", ErrorCode.MALFORMED),
        ({"load": {"predicted_ttft_ms": "fast"}}, "load.predicted_ttft_ms", ErrorCode.MALFORMED),
        ({"load": {"running": -1}}, "running", ErrorCode.BAD_REQUEST),
        ({"load": {"decode_tok_s": math.nan}}, "load.decode_tok_s", ErrorCode.BAD_REQUEST),
        ({"addrs": [ADDR] * 33}, "addrs", ErrorCode.TOO_LARGE),
        ({"peer_id": ""}, "peer_id", ErrorCode.BAD_REQUEST),
    ],
)
def test_bad_fields_are_named(changes, field: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(_body(**changes))
    assert info.value.code == code
    assert info.value.field == field


def test_missing_required_field_is_named() -> None:
    body = msgpack.unpackb(encode(ANNOUNCE))
    del body["version"]
    with pytest.raises(ProtocolError) as info:
        decode(msgpack.packb(body))
    assert (info.value.code, info.value.field) == (ErrorCode.MALFORMED, "version")


def test_decode_as_checks_the_type() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_as(encode(PeersRequest()), PeerAnnounce)
    assert info.value.code == ErrorCode.BAD_REQUEST


def test_error_reply_maps_unknown_codes_to_internal() -> None:
    assert ErrorReply(code=999).error_code == ErrorCode.INTERNAL
    err = ProtocolError(ErrorCode.OVERLOADED, "busy", field="ttft_ms")
    reply = decode(encode(ErrorReply.from_error(err, retry_after_ms=100)))
    assert (reply.error_code, reply.field, reply.retry_after_ms) == (ErrorCode.OVERLOADED, "ttft_ms", 100)
