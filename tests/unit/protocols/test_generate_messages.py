"""Golden bytes and validation of the `/swarm/generate/1.0.0` messages."""

from __future__ import annotations

import pytest

from protocols import (
    Cancel,
    ChatMessage,
    ErrorCode,
    GenerateAccepted,
    GenerateDone,
    GenerateRejected,
    GenerateRequest,
    ProtocolError,
    Timings,
    TokenChunk,
    Usage,
    decode,
    encode,
)

GOLDEN = {
    "generate_request": (
        GenerateRequest(request_id="r1", model_id="default", prompt="hi", max_new_tokens=8, temperature=0.0,
                        stop=["\n"], ttft_ms=500.0),
        "de0011a474797065b067656e65726174655f72657175657374a176920100aa726571756573745f6964a27231a86d6f64656c5f6964"
        "a764656661756c74a670726f6d7074a26869b070726f6d70745f746f6b656e5f696473c0a86d65737361676573c0b6636f6e74696e"
        "756174696f6e5f746f6b656e5f69647390ae6d61785f6e65775f746f6b656e7308ab74656d7065726174757265cb000000000000000"
        "0a5746f705f6b00a5746f705f70cb3ff0000000000000a473656564c0a473746f7091a10aa7747466745f6d73cb407f40000000000"
        "0a774706f745f6d73c0a87072696f7269747900",
    ),
    "generate_request_chat": (
        GenerateRequest(request_id="r2", messages=[ChatMessage("user", "hi")], continuation_token_ids=[5, 6],
                        max_new_tokens=4),
        "de0011a474797065b067656e65726174655f72657175657374a176920100aa726571756573745f6964a27232a86d6f64656c5f6964"
        "a0a670726f6d7074c0b070726f6d70745f746f6b656e5f696473c0a86d657373616765739182a4726f6c65a475736572a7636f6e74"
        "656e74a26869b6636f6e74696e756174696f6e5f746f6b656e5f696473920506ae6d61785f6e65775f746f6b656e7304ab74656d70"
        "65726174757265cb0000000000000000a5746f705f6b00a5746f705f70cb3ff0000000000000a473656564c0a473746f7090a77474"
        "66745f6d73c0a774706f745f6d73c0a87072696f7269747900",
    ),
    "generate_accepted": (
        GenerateAccepted(request_id="r1", model_id="m", model_hash="ab", prompt_tokens=2, predicted_ttft_ms=12.5),
        "87a474797065b167656e65726174655f6163636570746564a176920100aa726571756573745f6964a27231a86d6f64656c5f6964a1"
        "6daa6d6f64656c5f68617368a26162ad70726f6d70745f746f6b656e7302b17072656469637465645f747466745f6d73cb4029000000"
        "000000",
    ),
    "generate_rejected": (
        GenerateRejected(request_id="r1", code=2, message="busy", field="ttft_ms", retry_after_ms=100),
        "87a474797065b167656e65726174655f72656a6563746564a176920100aa726571756573745f6964a27231a4636f646502a76d6573"
        "73616765a462757379a56669656c64a7747466745f6d73ae72657472795f61667465725f6d7364",
    ),
    "token_chunk": (
        TokenChunk(request_id="r1", index=3, token_ids=[104, 105], text="hi"),
        "86a474797065ab746f6b656e5f6368756e6ba176920100aa726571756573745f6964a27231a5696e64657803a9746f6b656e5f6964"
        "73926869a474657874a26869",
    ),
    "generate_done": (
        GenerateDone(request_id="r1", finish_reason="length", usage=Usage(2, 8),
                     timings=Timings(ttft_ms=10.0, tpot_ms=2.0, e2e_ms=24.0, queue_ms=None)),
        "87a474797065ad67656e65726174655f646f6e65a176920100aa726571756573745f6964a27231ad66696e6973685f726561736f6e"
        "a66c656e677468a5757361676582ad70726f6d70745f746f6b656e7302b1636f6d706c6574696f6e5f746f6b656e7308a774696d69"
        "6e677384a7747466745f6d73cb4024000000000000a774706f745f6d73cb4000000000000000a66532655f6d73cb40380000000000"
        "00a871756575655f6d73c0a56572726f72c0",
    ),
    "cancel": (Cancel(request_id="r1"), "83a474797065a663616e63656ca176920100aa726571756573745f6964a27231"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes_and_round_trip(name: str) -> None:
    message, hex_bytes = GOLDEN[name]
    assert encode(message).hex() == hex_bytes
    assert decode(bytes.fromhex(hex_bytes)) == message


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "a", "messages": [ChatMessage("user", "b")]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "a", "max_new_tokens": 2, "continuation_token_ids": [1, 2]}, "continuation_token_ids"),
        ({"messages": []}, "messages"),
    ],
)
def test_generate_request_validation_names_the_field(kwargs, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(encode(GenerateRequest(request_id="r", **kwargs)))
    assert info.value.code == ErrorCode.BAD_REQUEST
    assert info.value.field == field


def test_unknown_finish_reason_is_malformed() -> None:
    with pytest.raises(ProtocolError) as info:
        decode(encode(GenerateDone(request_id="r", finish_reason="exploded")))
    assert info.value.field == "finish_reason"
