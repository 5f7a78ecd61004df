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
    TokenLogprobs,
    Usage,
    decode,
    encode,
)

GOLDEN = {
    "generate_request": (
        GenerateRequest(request_id="r1", model_id="default", prompt="hi", max_new_tokens=8, temperature=0.0,
                        stop=["\n"], ttft_ms=500.0),
        "de0017a474797065b067656e65726174655f72657175657374a176920101aa726571756573745f6964a27231a86d6f64656c5f69"
        "64a764656661756c74a670726f6d7074a26869b070726f6d70745f746f6b656e5f696473c0a86d65737361676573c0b6636f6e74"
        "696e756174696f6e5f746f6b656e5f69647390ae6d61785f6e65775f746f6b656e7308ab74656d7065726174757265cb00000000"
        "00000000a5746f705f6b00a5746f705f70cb3ff0000000000000a473656564c0a473746f7091a10aa7747466745f6d73cb407f40"
        "0000000000a774706f745f6d73c0a87072696f7269747900a16e01a86c6f6770726f6273c0b070726573656e63655f70656e616c"
        "7479cb0000000000000000b16672657175656e63795f70656e616c7479cb0000000000000000b272657065746974696f6e5f7065"
        "6e616c7479cb3ff0000000000000aa69676e6f72655f656f73c2",
    ),
    "generate_request_chat": (
        GenerateRequest(request_id="r2", messages=[ChatMessage("user", "hi")], continuation_token_ids=[5, 6],
                        max_new_tokens=4),
        "de0017a474797065b067656e65726174655f72657175657374a176920101aa726571756573745f6964a27232a86d6f64656c5f69"
        "64a0a670726f6d7074c0b070726f6d70745f746f6b656e5f696473c0a86d657373616765739182a4726f6c65a475736572a7636f"
        "6e74656e74a26869b6636f6e74696e756174696f6e5f746f6b656e5f696473920506ae6d61785f6e65775f746f6b656e7304ab74"
        "656d7065726174757265cb0000000000000000a5746f705f6b00a5746f705f70cb3ff0000000000000a473656564c0a473746f70"
        "90a7747466745f6d73c0a774706f745f6d73c0a87072696f7269747900a16e01a86c6f6770726f6273c0b070726573656e63655f"
        "70656e616c7479cb0000000000000000b16672657175656e63795f70656e616c7479cb0000000000000000b27265706574697469"
        "6f6e5f70656e616c7479cb3ff0000000000000aa69676e6f72655f656f73c2",
    ),
    "generate_accepted": (
        GenerateAccepted(request_id="r1", model_id="m", model_hash="ab", prompt_tokens=2, predicted_ttft_ms=12.5),
        "89a474797065b167656e65726174655f6163636570746564a176920101aa726571756573745f6964a27231a86d6f64656c5f6964"
        "a16daa6d6f64656c5f68617368a26162ad70726f6d70745f746f6b656e7302b17072656469637465645f747466745f6d73cb4029"
        "000000000000a16e01a86c6f6770726f6273c0",
    ),
    "generate_rejected": (
        GenerateRejected(request_id="r1", code=2, message="busy", field="ttft_ms", retry_after_ms=100),
        "87a474797065b167656e65726174655f72656a6563746564a176920100aa726571756573745f6964a27231a4636f646502a76d6573"
        "73616765a462757379a56669656c64a7747466745f6d73ae72657472795f61667465725f6d7364",
    ),
    "token_chunk": (
        TokenChunk(request_id="r1", index=3, token_ids=[104, 105], text="hi"),
        "88a474797065ab746f6b656e5f6368756e6ba176920101aa726571756573745f6964a27231a5696e64657803a9746f6b656e5f69"
        "6473926869a474657874a26869a663686f69636500a86c6f6770726f6273c0",
    ),
    "generate_done": (
        GenerateDone(request_id="r1", finish_reason="length", usage=Usage(2, 8),
                     timings=Timings(ttft_ms=10.0, tpot_ms=2.0, e2e_ms=24.0, queue_ms=None)),
        "88a474797065ad67656e65726174655f646f6e65a176920101aa726571756573745f6964a27231ad66696e6973685f726561736f"
        "6ea66c656e677468a5757361676582ad70726f6d70745f746f6b656e7302b1636f6d706c6574696f6e5f746f6b656e7308a77469"
        "6d696e677384a7747466745f6d73cb4024000000000000a774706f745f6d73cb4000000000000000a66532655f6d73cb40380000"
        "00000000a871756575655f6d73c0a56572726f72c0ae66696e6973685f726561736f6e7390",
    ),
    "generate_request_samples": (
        GenerateRequest(request_id="r3", prompt="hi", max_new_tokens=4, temperature=1.0, seed=7, n=4,
                        logprobs=2, presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.25,
                        ignore_eos=True),
        "de0017a474797065b067656e65726174655f72657175657374a176920101aa726571756573745f6964a27233a86d6f64656c5f69"
        "64a0a670726f6d7074a26869b070726f6d70745f746f6b656e5f696473c0a86d65737361676573c0b6636f6e74696e756174696f"
        "6e5f746f6b656e5f69647390ae6d61785f6e65775f746f6b656e7304ab74656d7065726174757265cb3ff0000000000000a5746f"
        "705f6b00a5746f705f70cb3ff0000000000000a47365656407a473746f7090a7747466745f6d73c0a774706f745f6d73c0a87072"
        "696f7269747900a16e04a86c6f6770726f627302b070726573656e63655f70656e616c7479cb3fe0000000000000b16672657175"
        "656e63795f70656e616c7479cbbfe0000000000000b272657065746974696f6e5f70656e616c7479cb3ff4000000000000aa6967"
        "6e6f72655f656f73c3",
    ),
    "generate_accepted_samples": (
        GenerateAccepted(request_id="r3", model_id="m", model_hash="ab", prompt_tokens=2, n=4, logprobs=2),
        "89a474797065b167656e65726174655f6163636570746564a176920101aa726571756573745f6964a27233a86d6f64656c5f6964"
        "a16daa6d6f64656c5f68617368a26162ad70726f6d70745f746f6b656e7302b17072656469637465645f747466745f6d73cb0000"
        "000000000000a16e04a86c6f6770726f627302",
    ),
    "token_chunk_logprobs": (
        TokenChunk(request_id="r3", index=0, token_ids=[104], text="h", choice=2,
                   logprobs=[TokenLogprobs(104, -0.5, [104, 105], [-0.5, -1.5])]),
        "88a474797065ab746f6b656e5f6368756e6ba176920101aa726571756573745f6964a27233a5696e64657800a9746f6b656e5f69"
        "64739168a474657874a168a663686f69636502a86c6f6770726f62739184a8746f6b656e5f696468a76c6f6770726f62cbbfe000"
        "0000000000a7746f705f696473926869ac746f705f6c6f6770726f627392cbbfe0000000000000cbbff8000000000000",
    ),
    "generate_done_samples": (
        GenerateDone(request_id="r3", finish_reason="length", usage=Usage(2, 13),
                 finish_reasons=["length", "stop", "length", "length"]),
        "88a474797065ad67656e65726174655f646f6e65a176920101aa726571756573745f6964a27233ad66696e6973685f726561736f"
        "6ea66c656e677468a5757361676582ad70726f6d70745f746f6b656e7302b1636f6d706c6574696f6e5f746f6b656e730da77469"
        "6d696e677384a7747466745f6d73c0a774706f745f6d73c0a66532655f6d73c0a871756575655f6d73c0a56572726f72c0ae6669"
        "6e6973685f726561736f6e7394a66c656e677468a473746f70a66c656e677468a66c656e677468",
    ),
    "cancel": (Cancel(request_id="r1"), "83a474797065a663616e63656ca176920100aa726571756573745f6964a27231"),
}  # fmt: skip

# Bytes a 1.0 peer sends: they still decode, the new fields taking their defaults.
GOLDEN_1_0 = {
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
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_bytes_and_round_trip(name: str) -> None:
    message, hex_bytes = GOLDEN[name]
    assert encode(message).hex() == hex_bytes
    assert decode(bytes.fromhex(hex_bytes)) == message


@pytest.mark.parametrize("name", sorted(GOLDEN_1_0))
def test_version_1_0_bytes_still_decode(name: str) -> None:
    message, hex_bytes = GOLDEN_1_0[name]
    decoded = decode(bytes.fromhex(hex_bytes))
    assert decoded == message
    assert getattr(decoded, "n", 1) == 1 and getattr(decoded, "logprobs", None) is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "a", "messages": [ChatMessage("user", "b")]}, "prompt"),
        ({}, "prompt"),
        ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "a", "max_new_tokens": 2, "continuation_token_ids": [1, 2]}, "continuation_token_ids"),
        ({"messages": []}, "messages"),
        ({"prompt": "a", "n": 0}, "n"),
        ({"prompt": "a", "n": 257}, "n"),
        ({"prompt": "a", "n": 2, "continuation_token_ids": [1]}, "n"),
        ({"prompt": "a", "logprobs": 21}, "logprobs"),
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


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (TokenChunk("r", 0, [1, 2], logprobs=[TokenLogprobs(1, -1.0)]), "logprobs"),
        (TokenChunk("r", 0, [1], choice=-1), "choice"),
        (TokenChunk("r", 0, [1], logprobs=[TokenLogprobs(1, -1.0, [1, 2], [-1.0])]), "top_ids"),
        (GenerateDone("r", "stop", finish_reasons=["stop", "exploded"]), "finish_reasons"),
    ],
)
def test_malformed_samples_and_logprobs_name_the_field(message, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(encode(message))
    assert info.value.code == ErrorCode.MALFORMED
    assert info.value.field == field
