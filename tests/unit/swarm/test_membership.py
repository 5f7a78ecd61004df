"""The membership table with a fake clock: join, refresh, stale announces, expiry."""

from __future__ import annotations

from protocols import PeerAnnounce
from swarm.runtime.membership import Membership


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def announce(peer: str, ts: int, seq: int = 0) -> PeerAnnounce:
    return PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=ts, seq=seq)


def test_join_refresh_and_expire() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    assert table.observe(announce("a", 1)) is True
    assert table.observe(announce("a", 2)) is False
    assert table.observe(announce("self", 1)) is False
    assert len(table) == 1 and "self" not in table
    clock.now += 6
    table.observe(announce("b", 1))
    clock.now += 5  # a silent for 11 s, b for 5 s
    assert table.expire() == ["a"]
    assert [e.announce.peer_id for e in table.entries()] == ["b"]
    assert table.get("b").age_s(clock.now) == 5


def test_stale_announce_neither_replaces_nor_refreshes() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    table.observe(announce("a", 50, seq=5))
    clock.now += 8
    table.observe(announce("a", 40, seq=9))  # reordered old message
    assert table.get("a").announce.timestamp_ms == 50
    clock.now += 3
    assert table.expire() == ["a"]
