"""Failover in the asker: the text of an answer is decoded from all its ids whichever peers sent them (stop strings
and UTF-8 characters that span the switch included), and a resume only goes to a peer with the same model hash.

The node is a fake with announces (the layer under test is SwarmGenerator); tokens are the embedded models' bytes.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio

from protocols import GenerateAccepted, GenerateDone, GenerateRequest, Load, PeerAnnounce, TokenChunk
from serving.detokenizer import IncrementalDetokenizer
from serving.model import build_byte_tokenizer
from swarm.gateway.answer_text import AnswerText
from swarm.gateway.dispatch import Progress, ResumeUnavailable, SwarmGenerator

MODEL = "swarm-embedded-tiny-seed0"
PROMPT = "say:"


def _node(announces: list[PeerAnnounce] | None = None) -> SimpleNamespace:
    host = SimpleNamespace(connected_peers=lambda: {a.peer_id for a in announces or []})
    return SimpleNamespace(peer_id="me", serve_role=None, host=host, server_announces=lambda: list(announces or []),
                           serving_view=lambda: None, config=SimpleNamespace(network=SimpleNamespace(route_sample=4)),
                           load_probe=SimpleNamespace(refresh=_fresh_already))  # fmt: skip


async def _fresh_already(candidates: list[PeerAnnounce], state: object) -> list[PeerAnnounce]:
    return candidates  # the loads in these announces count as just measured


def _ids(text: str) -> list[int]:
    return list(text.encode())


def _request(stop: list[str], max_new_tokens: int = 64) -> GenerateRequest:
    return GenerateRequest(request_id="r1", model_id="tiny", prompt=PROMPT, stop=stop, max_new_tokens=max_new_tokens)


def _accepted(model_hash: str = "h0") -> GenerateAccepted:
    return GenerateAccepted("r1", MODEL, model_hash, prompt_tokens=len(PROMPT))


def _server_text(ids: list[int], stop: list[str], context: list[int]) -> str:
    """What a serving engine streams for ``ids`` (a resumed one takes the ids before as prompt context)."""
    detok = IncrementalDetokenizer(build_byte_tokenizer(), context, stop)
    return "".join(detok.add([i]) for i in ids)


def _run(parts: list[tuple[str, list[int]]], stop: list[str], done_reason: str = "length") -> Progress:
    """Feed ``parts`` (peer, ids) through one SwarmGenerator as consecutive peers would send them."""
    gen, request, progress = SwarmGenerator(_node()), _request(stop), Progress()
    index, prompt = 0, _ids(PROMPT)
    for peer, ids in parts:
        assert gen._accept(peer, _accepted(), request, progress)
        text = _server_text(ids, stop, prompt + [t for _, p in parts for t in p][:index])
        gen._apply(TokenChunk("r1", index, ids, text), progress, peer)
        index += len(ids)
        if progress.done is not None:
            return progress
    gen._apply(GenerateDone("r1", done_reason), progress, parts[-1][0])
    return progress


def test_ids_from_two_peers_give_the_text_of_one() -> None:
    answer = "hello, wörld: ünïcode ✓ and more"
    ids = _ids(answer)
    one = _run([("a", ids)], stop=[])
    for cut in range(1, len(ids)):
        two = _run([("a", ids[:cut]), ("b", ids[cut:])], stop=[])
        assert "".join(two.text) == "".join(one.text) == answer, cut
        assert two.token_ids == ids and two.peers == ["a", "b"]


def test_multibyte_character_split_across_the_switch() -> None:
    ids = _ids("café!")
    cut = len(_ids("caf")) + 1  # the first byte of "é" from the dead peer, the second from the next one
    progress = _run([("a", ids[:cut]), ("b", ids[cut:])], stop=[])
    assert "".join(progress.text) == "café!"
    # What the peers' own text deltas would have given: the dead peer held back the half character.
    dead = _server_text(ids[:cut], [], _ids(PROMPT))
    resumed = _server_text(ids[cut:], [], _ids(PROMPT) + ids[:cut])
    assert dead + resumed != "café!"


def test_stop_string_split_across_the_switch_ends_the_answer() -> None:
    stop = ["STOP"]
    ids = _ids("one two STOP three")
    cut = len(_ids("one two ST"))
    progress = _run([("a", ids[:cut]), ("b", ids[cut:])], stop=stop)
    assert "".join(progress.text) == "one two "
    assert progress.done is not None and progress.done.finish_reason == "stop"
    # Ids up to the one that completes the stop string, as one engine would stop: none of " three".
    assert progress.token_ids == _ids("one two STOP")
    assert progress.done.usage.completion_tokens == len(_ids("one two STOP"))
    # The resumed peer sees "ST" only as prompt: it never finds the stop string, and its text runs on.
    assert _server_text(ids[cut:], stop, _ids(PROMPT) + ids[:cut]).startswith("OP th")


def test_held_back_text_is_flushed_at_the_end() -> None:
    # "ab" may be the start of the stop string "abc" until the answer ends: shown in the last delta.
    progress = _run([("a", _ids("xyab"))], stop=["abc"])
    assert progress.text == ["xy", "ab"]
    assert progress.done is not None and progress.done.finish_reason == "length"


def test_answer_text_stops_at_the_completing_token() -> None:
    answer = AnswerText(build_byte_tokenizer(), [], ["<END>"])
    text, taken = answer.add(_ids("ok<END>tail"))
    assert (text, taken, answer.stopped) == ("ok", len(_ids("ok<END>")), True)
    assert answer.add(_ids("more")) == ("", 0)
    assert answer.finish() == ""


def _server(peer: str, model_hash: str, ttft_ms: float) -> PeerAnnounce:
    return PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=0, roles=["serve"], model_id=MODEL,
                        model_hash=model_hash, load=Load(predicted_ttft_ms=ttft_ms))  # fmt: skip


def test_resume_only_on_the_same_model_hash() -> None:
    # "other" has the same model id but other weights, and the best predicted TTFT: never chosen for a resume.
    announces = [_server("other", "h1", 1.0), _server("same", "h0", 500.0)]
    gen = SwarmGenerator(_node(announces), timeout_s=0)
    fresh, resumed = Progress(), Progress(model_hash="h0")

    async def main() -> tuple[list[str], list[str]]:
        first = [await gen._pick_peer(_request([]), fresh, trio.current_time() + 5) for _ in range(20)]
        again = [await gen._pick_peer(_request([]), resumed, trio.current_time() + 5) for _ in range(20)]
        return first, again

    first, again = trio.run(main)
    assert set(first) == {"other"}  # a new request takes the best peer, whatever its weights
    assert set(again) == {"same"}


def test_resume_without_a_same_hash_peer_fails_with_a_typed_error() -> None:
    gen = SwarmGenerator(_node([_server("other", "h1", 1.0)]), timeout_s=0)
    progress = Progress(model_hash="h0", token_ids=[1, 2, 3])
    with pytest.raises(ResumeUnavailable, match="model hash h0"):
        trio.run(gen._pick_peer, _request([]), progress, 0.0)


def test_a_peer_accepting_with_other_weights_is_refused_and_avoided() -> None:
    gen, request, progress = SwarmGenerator(_node()), _request([]), Progress()
    assert gen._accept("a", _accepted("h0"), request, progress)
    assert not gen._accept("liar", _accepted("h1"), request, progress)
    assert progress.peers == ["a"] and progress.model_hash == "h0"
    assert gen.state.avoided("liar")
