"""Golden bytes of `RolloutBatch` and of an announce carrying RL state; bounds refused before or at decoding."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from protocols import ROLLOUT_LIMITS, ErrorCode, PeerAnnounce, ProtocolError, decode, decode_as, encode
from protocols.messages import RLState
from protocols.rollouts import MAX_COMPLETION_BYTES, RolloutBatch, RolloutGroup, TaskRefRecord
from tests.unit.protocols.test_messages import ANNOUNCE, ANNOUNCE_1_1_HEX

GROUP = RolloutGroup(task=TaskRefRecord(dataset="chain_sum", config_digest="ef56", index=42), slot=0,
                     prompt_format="compact-v1", completions=[b"7", b"8"], advisory_rewards=[1.0, 0.0], seed=9,
                     sampler_logprobs=[-0.5, -1.5])  # fmt: skip
BATCH = RolloutBatch(peer_id="12D3KooWexample", round=5, policy_version=5, model_hash="ab12", task_set_digest="cd34",
                     groups=[GROUP])  # fmt: skip
ANNOUNCE_RL = dataclasses.replace(
    ANNOUNCE, rl=RLState(round=4, mean_reward=0.5, groups_received=12, groups_rejected=3, groups_used=6)
)

GOLDEN = {
    "rollout_batch": (BATCH, (
        "88a474797065ad726f6c6c6f75745f6261746368a176920100a7706565725f6964af313244334b6f6f576578616d706c65a5726f756e"
        "6405ae706f6c6963795f76657273696f6e05aa6d6f64656c5f68617368a461623132af7461736b5f7365745f646967657374a4636433"
        "34a667726f7570739187a47461736b83a764617461736574a9636861696e5f73756dad636f6e6669675f646967657374a46566353"
        "6a5696e6465782aa4736c6f7400ad70726f6d70745f666f726d6174aa636f6d706163742d7631ab636f6d706c6574696f6e7392c40"
        "137c40138b061647669736f72795f7265776172647392cb3ff0000000000000cb0000000000000000a47365656409b073616d706c6"
        "5725f6c6f6770726f627392cbbfe0000000000000cbbff8000000000000"
    )),
    "announce_rl": (ANNOUNCE_RL, (
        "de0010a474797065ad706565725f616e6e6f756e6365a176920103a7706565725f6964af313244334b6f6f576578616d706c65a5616464"
        "727391d92b2f6970342f3132372e302e302e312f7463702f343030312f7032702f313244334b6f6f576578616d706c65a776657273696f"
        "6ea5302e312e30ac74696d657374616d705f6d73cf0000018bcfe56800a5726f6c657391a57365727665a86d6f64656c5f6964a7646566"
        "61756c74aa6d6f64656c5f68617368a461623132a8686172647761726584a6646576696365a3637075ab6465766963655f6e616d65a178"
        "ac6d656d6f72795f6279746573cd0400a96370755f636f72657302a46c6f616486a772756e6e696e6701a777616974696e6702b1707265"
        "6469637465645f747466745f6d73cb4029000000000000ac6465636f64655f746f6b5f73cb4059000000000000ae667265655f6b765f74"
        "6f6b656e73cd1000ad70726566696c6c5f746f6b5f73cb409f400000000000a8747261696e696e6783a5726f756e6403a4737465701ea4"
        "6c6f7373cb4004000000000000ae686976656d696e645f616464727390a373657107a2726c85a5726f756e6404ab6d65616e5f72657761"
        "7264cb3fe0000000000000af67726f7570735f72656365697665640caf67726f7570735f72656a656374656403ab67726f7570735f7573"
        "656406a76465766963657390"
    )),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes(name: str) -> None:
    message, hex_bytes = GOLDEN[name]
    assert encode(message).hex() == hex_bytes
    assert decode(bytes.fromhex(hex_bytes), limits=ROLLOUT_LIMITS) == message


def test_announce_1_0_without_rl_still_decodes() -> None:
    """A 1.0 announce (no `rl` key) from an older peer reads with rl None."""
    old = bytes.fromhex(ANNOUNCE_1_1_HEX.replace("a176920101", "a176920100").removesuffix("a2726cc0"))
    old = old.replace(b"\x8f", b"\x8e", 1)  # one key fewer in the map header
    assert decode_as(old, PeerAnnounce) == ANNOUNCE


def _raw(**changes) -> bytes:
    body = msgpack.unpackb(encode(BATCH))
    body.update(changes)
    return msgpack.packb(body, use_bin_type=True)


def test_completion_past_the_bin_limit_is_refused_before_allocation() -> None:
    group = msgpack.unpackb(encode(BATCH))["groups"][0]
    group["completions"] = [b"x" * (MAX_COMPLETION_BYTES + 1), b"y"]
    with pytest.raises(ProtocolError) as err:
        decode(_raw(groups=[group]), limits=ROLLOUT_LIMITS)
    assert err.value.code == ErrorCode.TOO_LARGE


def test_too_many_groups_refused() -> None:
    group = msgpack.unpackb(encode(BATCH))["groups"][0]
    with pytest.raises(ProtocolError) as err:
        decode(_raw(groups=[group] * 17), limits=ROLLOUT_LIMITS)
    assert (err.value.code, err.value.field) == (ErrorCode.TOO_LARGE, "groups")
    with pytest.raises(ProtocolError) as err:  # past the decoder's array bound: refused before building records
        decode(_raw(groups=[group] * 65), limits=ROLLOUT_LIMITS)
    assert err.value.code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"completions": [b"1"], "advisory_rewards": [1.0]}, "completions"),
        ({"advisory_rewards": [1.0]}, "advisory_rewards"),
        ({"advisory_rewards": [1.5, 0.0]}, "advisory_rewards"),
        ({"sampler_logprobs": [0.0]}, "sampler_logprobs"),
        ({"completions": ["7", "8"]}, "completions[0]"),
    ],
)
def test_bad_groups_name_the_field(change: dict, field: str) -> None:
    group = msgpack.unpackb(encode(BATCH))["groups"][0]
    group.update(change)
    with pytest.raises(ProtocolError) as err:
        decode(_raw(groups=[group]), limits=ROLLOUT_LIMITS)
    assert err.value.field is not None and err.value.field.endswith(field)
