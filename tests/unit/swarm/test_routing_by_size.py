"""Routing by the request's own size (a peer's announced prefill rate) and the least-outstanding baseline."""

from __future__ import annotations

from collections import Counter

import pytest

from protocols import Load, PeerAnnounce
from protocols.messages import LOAD_PROBE_PROMPT_TOKENS
from swarm.gateway.routing import RouteState, predicted_ttft_ms, prompt_tokens_of, rank_peers


def server(peer: str, ttft_ms: float, prefill_tok_s: float = 0.0) -> PeerAnnounce:
    load = Load(predicted_ttft_ms=ttft_ms, prefill_tok_s=prefill_tok_s)
    return PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=0, roles=["serve"],
                        model_id="swarm-embedded-default-seed0", load=load)  # fmt: skip


def test_a_request_is_predicted_at_its_own_prompt_length() -> None:
    # Idle peer, 1000 prompt tokens/s: the probe prompt's TTFT is its own prefill, 128 ms.
    idle = server("idle", 1000.0 * LOAD_PROBE_PROMPT_TOKENS / 1000, prefill_tok_s=1000)
    assert predicted_ttft_ms(idle, 0, 512) == pytest.approx(512.0)
    assert predicted_ttft_ms(idle, 0, 32) == pytest.approx(32.0)
    # 200 ms of queue ahead of the probe, and two of this asker's requests awaiting a first token there.
    busy = server("busy", 200 + 128, prefill_tok_s=1000)
    assert predicted_ttft_ms(busy, 0, 64) == pytest.approx(264.0)
    assert predicted_ttft_ms(busy, 2, 64) == pytest.approx(264.0 + 2 * 128)
    old = server("old", 300.0)  # a 1.0 announce: no prefill rate, the probe's TTFT as it was
    assert predicted_ttft_ms(old, 1, 512) == pytest.approx(600.0)


def test_long_prompts_go_to_the_fast_prefiller_and_short_ones_to_the_short_queue() -> None:
    # "queue": fast prefill (4000 tok/s) behind 300 ms of queue; "slow": idle but prefills at 500 tok/s.
    queue = server("queue", 300 + 1000 * LOAD_PROBE_PROMPT_TOKENS / 4000, prefill_tok_s=4000)
    slow = server("slow", 1000 * LOAD_PROBE_PROMPT_TOKENS / 500, prefill_tok_s=500)
    state = RouteState()
    # 32 tokens: 308 ms there, 64 ms here. 1024 tokens: 556 ms there, 2048 ms here.
    assert rank_peers([queue, slow], "default", state, prompt_tokens=32)[0].peer_id == "slow"
    assert rank_peers([queue, slow], "default", state, prompt_tokens=1024)[0].peer_id == "queue"
    # With a TTFT target of 1000 ms only "queue" can serve the long prompt with headroom: it comes first.
    for _ in range(20):
        ranked = rank_peers([queue, slow], "default", state, ttft_ms=1000, prompt_tokens=1024)
        assert [p.peer_id for p in ranked] == ["queue", "slow"]


def test_least_loaded_picks_the_peer_with_fewest_outstanding_requests() -> None:
    peers = [server("a", 10), server("b", 500), server("c", 20)]
    state = RouteState(outstanding={"a": 3, "b": 0, "c": 1})
    assert [p.peer_id for p in rank_peers(peers, "default", state, policy="least_loaded")] == ["b", "c", "a"]
    state.outstanding = {"a": 0, "b": 0, "c": 2}  # ties are broken at random, not always the same way
    firsts = Counter(rank_peers(peers, "default", state, policy="least_loaded")[0].peer_id for _ in range(200))
    assert set(firsts) == {"a", "b"} and min(firsts.values()) > 40


def test_prompt_length_known_to_the_asker() -> None:
    assert prompt_tokens_of([1, 2, 3], None, None) == 3
    assert prompt_tokens_of(None, "héllo", None) == 6  # UTF-8 bytes: an upper bound of the tokens
    assert prompt_tokens_of(None, None, [{"role": "user", "content": "hi"}]) is None
