"""Peer selection: model matching, best predicted TTFT first, this asker's own queued requests, avoidance."""

from __future__ import annotations

import pytest

from protocols import Load, PeerAnnounce
from swarm.routing import RouteState, rank_peers, serves_model


def server(peer: str, ttft_ms: float, model: str = "swarm-embedded-default-seed0", roles=("serve",)) -> PeerAnnounce:
    return PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=0, roles=list(roles), model_id=model,
                        load=Load(predicted_ttft_ms=ttft_ms))  # fmt: skip


def test_model_matching() -> None:
    a = server("a", 10)
    assert serves_model(a, "default") and serves_model(a, "swarm-embedded-default-seed0") and serves_model(a, "")
    assert not serves_model(a, "tiny") and not serves_model(a, "other")
    assert not serves_model(server("c", 1, roles=("client",)), "")
    assert serves_model(server("q", 1, model="qwen3-tiny"), "qwen3-tiny")


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
