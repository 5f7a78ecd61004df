"""Peer selection: model matching, best predicted TTFT first, this asker's own queued requests, avoidance."""

from __future__ import annotations

from collections import Counter

import pytest

from protocols import Load, PeerAnnounce
from swarm.gateway.routing import RouteState, rank_peers, serves_model


def server(
    peer: str, ttft_ms: float, model: str = "swarm-embedded-default-seed0", roles=("serve",), step_ms: float = 0.0
) -> PeerAnnounce:
    load = Load(predicted_ttft_ms=ttft_ms, running=1 if step_ms else 0, decode_tok_s=1000 / step_ms if step_ms else 0)
    return PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=0, roles=list(roles), model_id=model,
                        load=load)  # fmt: skip


def test_model_matching() -> None:
    a = server("a", 10)
    assert serves_model(a, "default") and serves_model(a, "swarm-embedded-default-seed0") and serves_model(a, "")
    assert not serves_model(a, "tiny") and not serves_model(a, "other")
    assert not serves_model(server("c", 1, roles=("client",)), "")
    assert serves_model(server("q", 1, model="qwen3-tiny"), "qwen3-tiny")
    shipped, seeded = (
        server("d", 1, model="swarm-embedded-default"),
        server("r", 1, model="swarm-embedded-default-random-seed0"),
    )
    assert serves_model(shipped, "default") and not serves_model(shipped, "default-random")
    assert serves_model(seeded, "default-random") and not serves_model(seeded, "default")


def test_best_predicted_ttft_first_and_own_queue_counts() -> None:
    peers = [server("slow", 300), server("fast", 100), server("mid", 150), server("other", 1, model="x")]
    state = RouteState()
    assert [p.peer_id for p in rank_peers(peers, "default", state)] == ["fast", "mid", "slow"]
    state.awaiting_first_token["fast"] = 1  # 100 * 2 > 150: one of ours is still queued there
    assert rank_peers(peers, "default", state)[0].peer_id == "mid"


def test_avoided_peers_are_skipped_until_their_time() -> None:
    peers = [server("a", 10), server("b", 20)]
    state = RouteState()
    state.avoid("a", 60)
    assert [p.peer_id for p in rank_peers(peers, None, state)] == ["b"]
    assert 59 < state.earliest_retry_s() <= 60
    state.avoid_until["a"] = 0.0
    assert [p.peer_id for p in rank_peers(peers, None, state)] == ["a", "b"]


def test_random_policy_is_a_permutation_of_the_candidates() -> None:
    peers = [server(str(i), i) for i in range(10)]
    orders = {tuple(p.peer_id for p in rank_peers(peers, None, RouteState(), policy="random")) for _ in range(20)}
    assert len(orders) > 1 and all(sorted(o) == sorted(str(i) for i in range(10)) for o in orders)
    with pytest.raises(ValueError, match="policy"):
        rank_peers(peers, None, RouteState(), policy="nearest")


def test_with_targets_load_spreads_over_every_peer_that_can_meet_them() -> None:
    peers = [server("fast", 100, step_ms=10), server("slow", 300, step_ms=30), server("late", 900, step_ms=10),
             server("stalls", 100, step_ms=90)]  # fmt: skip
    first = Counter(
        rank_peers(peers, "default", RouteState(), ttft_ms=1000, tpot_ms=100)[0].peer_id for _ in range(2000)
    )
    # Headroom: fast min(0.9, 0.9), slow min(0.7, 0.7); late (0.1) and stalls (tpot: 0.1) are predicted to miss.
    assert set(first) == {"fast", "slow"}
    assert 0.38 < first["slow"] / 2000 < 0.5  # drawn by headroom: P(slow first) = 0.7 / (0.9 + 0.7) = 0.44
    order = [p.peer_id for p in rank_peers(peers, "default", RouteState(), ttft_ms=1000, tpot_ms=100)]
    assert order[2:] == ["stalls", "late"]  # then the rest by predicted TTFT
    state = RouteState(awaiting_first_token={"fast": 9, "slow": 9})  # ours queued there: both predicted late now
    assert rank_peers(peers, "default", state, ttft_ms=1000, tpot_ms=100)[0].peer_id == "stalls"
