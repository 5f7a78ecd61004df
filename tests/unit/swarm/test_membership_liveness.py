"""Liveness in the membership table, on a fake clock: the transport (an open connection, an answer) keeps a peer
whose gossip is late, expiry stretches to the gaps actually observed between a peer's messages, and neither lets a
peer, or hearsay about one, outlive its reachability."""

from __future__ import annotations

import pytest

from protocols import Load, PeerAnnounce
from protocols.status import MAX_STATUS_PERIOD_S, PeerStatus
from swarm.runtime.gossip_policy import STATUS_MISSES, expiry_s, next_gap_s
from swarm.runtime.membership import CONNECTED_GRACE_EXPIRIES, Membership


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def announce(peer: str, *, ts: int = 1, model: str = "m") -> PeerAnnounce:
    return PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=ts, roles=["serve"], model_id=model)


def status(peer: str, seq: int, period_s: float = 2.0) -> PeerStatus:
    return PeerStatus(peer_id=peer, seq=seq, timestamp_ms=seq, period_s=period_s)


def test_an_open_connection_keeps_a_peer_whose_gossip_is_late_and_its_close_lets_it_expire() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    table.observe(announce("p"))
    for _ in range(12):  # 24 s of no gossip from p, but a connection to it stays open
        clock.now += 2.0
        assert table.expire(connected={"p"}) == []
    assert table.get("p").age_s(clock.now) == 24.0  # what the API shows: last heard 24 s ago
    clock.now += 9.0  # the connection closed 9 s ago: within its expiry
    assert table.expire() == []
    clock.now += 2.0
    assert table.expire() == ["p"]


def test_an_open_connection_alone_keeps_a_frozen_peer_only_a_few_expiries() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    table.observe(announce("frozen"))
    table.observe(announce("talking"))
    left_at = None
    for _ in range(59):  # both connections stay open; only "talking" goes on answering
        clock.now += 1.0
        table.answered("talking")
        if table.expire(connected={"frozen", "talking"}) == ["frozen"]:
            left_at = clock.now
    assert left_at is not None and left_at - 100.0 == pytest.approx((CONNECTED_GRACE_EXPIRIES + 1) * 10, abs=1.0)
    assert "talking" in table


def test_an_answer_vouches_for_a_peer_for_one_expiry() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    table.observe(announce("p"))
    clock.now += 8.0
    table.update_load("p", Load(running=1))  # it answered a load query
    clock.now += 8.0
    assert table.expire() == []
    assert table.answered("p")  # it answered a peer exchange
    clock.now += 10.5
    assert table.expire() == ["p"]
    assert not table.answered("p") and "p" not in table  # an answer never makes an entry


def test_hearsay_is_kept_only_while_the_peer_itself_is_reachable() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    table.observe(announce("told", ts=1), hearsay=True)
    table.observe(announce("reached", ts=1), hearsay=True)
    for ts in range(2, 12):  # more hearsay about both, newer each time: it refreshes neither
        clock.now += 1.0
        table.observe(announce("told", ts=ts), hearsay=True)
        table.observe(announce("reached", ts=ts), hearsay=True)
        assert table.expire(connected={"reached"}) == []
    clock.now += 0.5
    assert table.expire(connected={"reached"}) == ["told"]
    assert "reached" in table and table.get("reached").hearsay


def test_expiry_stretches_to_the_gaps_observed_and_shrinks_back() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=5, clock=clock)
    table.observe(announce("p"))
    seq = 0
    for _ in range(3):  # a 2 s period delivered every 4.5 s (a busy sender, queues on the way)
        clock.now += 4.5
        seq += 1
        assert table.observe_status(status("p", seq, period_s=2.0))
        assert table.expire() == []
    assert table.get("p").timeout_s == pytest.approx(STATUS_MISSES * 4.5)
    clock.now += 13.0  # three of its announced periods and more, but under three observed gaps
    assert table.expire() == []
    seq += 1
    table.observe_status(status("p", seq))
    for _ in range(30):  # deliveries on time again: the stretch decays back to the floor
        clock.now += 2.0
        seq += 1
        table.observe_status(status("p", seq))
    assert table.get("p").timeout_s == pytest.approx(6.0)
    clock.now += 6.5
    assert table.expire() == ["p"]


def test_observed_gaps_lift_expiry_by_bounded_steps_up_to_the_longest_period_allowed() -> None:
    assert next_gap_s(0.0, 1000.0, expiry_now_s=30.0) == 30.0  # a silence bridged by the transport counts no more
    assert next_gap_s(20.0, 1.0, expiry_now_s=30.0) == pytest.approx(15.0)
    assert expiry_s(2.0, floor_s=10.0, observed_gap_s=1e9) == STATUS_MISSES * MAX_STATUS_PERIOD_S
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    table.observe(announce("slow"))
    previous = table.get("slow").timeout_s
    for seq in range(1, 40):  # each message as late as its entry allows, kept alive by a connection meanwhile
        clock.now += 2 * previous
        table.expire(connected={"slow"})
        table.observe_status(status("slow", seq))
        timeout = table.get("slow").timeout_s
        assert timeout <= STATUS_MISSES * previous + 1e-9
        assert timeout <= STATUS_MISSES * MAX_STATUS_PERIOD_S
        previous = timeout
    assert previous == STATUS_MISSES * MAX_STATUS_PERIOD_S


def test_a_connected_peer_is_not_evicted_by_a_flood_of_newcomers() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock, max_peers=8, max_per_model=8)
    for i in range(8):
        table.observe(announce(f"p{i}"))
    clock.now += 9.0  # all past half their expiry; p0..p6 still connected
    table.expire(connected={f"p{i}" for i in range(7)})
    assert table.observe(announce("newcomer"))
    assert "p7" not in table and all(f"p{i}" in table for i in range(7))
    clock.now += 2.0
    for i in range(100):
        table.observe(announce(f"sybil-{i}"))
        clock.now += 0.02
    assert len(table) == 8 and all(f"p{i}" in table for i in range(7))
