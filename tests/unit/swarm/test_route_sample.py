"""Routing by power of d choices over the real `rank_peers`: a peer reporting an impossibly good (but in-bounds)
load is chosen only when drawn, so it attracts about d / N of the requests, not all of them."""

from __future__ import annotations

import random

from protocols import Load, PeerAnnounce
from swarm.gateway.route_sample import is_stale, sample_candidates
from swarm.gateway.routing import RouteState, rank_peers


def server(peer: str, ttft_ms: float, model: str = "m") -> PeerAnnounce:
    return PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=0, roles=["serve"], model_id=model,
                        load=Load(predicted_ttft_ms=ttft_ms, decode_tok_s=100.0, prefill_tok_s=1000.0))  # fmt: skip


def test_a_liar_is_chosen_only_when_drawn() -> None:
    rng = random.Random(7)
    peers = [server(f"honest-{i}", 200.0 + i) for i in range(99)] + [server("liar", 0.0)]
    d, requests = 4, 4000
    picks = []
    for _ in range(requests):
        sample = sample_candidates(peers, "m", d, rng)
        picks.append(rank_peers(sample, "m", RouteState())[0].peer_id)
    share = picks.count("liar") / requests
    assert 0.5 * d / len(peers) < share < 2 * d / len(peers)


def test_sample_keeps_only_the_model_and_all_when_few() -> None:
    peers = [server("a", 1.0), server("b", 1.0, model="other"), server("c", 1.0)]
    assert {a.peer_id for a in sample_candidates(peers, "m", 4)} == {"a", "c"}
    assert len(sample_candidates(peers * 10, "m", 3, random.Random(1))) == 3


def test_route_state_reads_the_injected_clock() -> None:
    now = [10.0]
    state = RouteState(clock=lambda: now[0])
    state.avoid("p", 5.0)
    assert state.avoided("p") and state.earliest_retry_s() == 5.0
    now[0] = 15.5
    assert not state.avoided("p")
    assert is_stale(load_at=1.0, now=6.0, max_age_s=4.0) and not is_stale(1.0, 4.0, 4.0)
