"""Who is in the swarm: the latest PeerAnnounce of every live peer, expired after `peer_timeout_s` of silence.

Knows announces and a clock; nothing about sockets. Only a peer itself can announce itself (the gossip origin is
checked against the announce's peer_id before anything reaches this table).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from protocols import PeerAnnounce


@dataclass
class PeerEntry:
    announce: PeerAnnounce
    first_seen: float
    last_seen: float

    def age_s(self, now: float) -> float:
        return max(now - self.last_seen, 0.0)


class Membership:
    """The membership table of one node. ``observe`` on every announce, ``expire`` periodically."""

    def __init__(self, self_id: str, peer_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.self_id = self_id
        self.peer_timeout_s = peer_timeout_s
        self._clock = clock
        self._peers: dict[str, PeerEntry] = {}

    def observe(self, announce: PeerAnnounce) -> bool:
        """Record an announce; True when the peer is new to the table. Stale (older) announces are ignored."""
        if announce.peer_id == self.self_id:
            return False
        now = self._clock()
        entry = self._peers.get(announce.peer_id)
        if entry is None:
            self._peers[announce.peer_id] = PeerEntry(announce, now, now)
            return True
        previous = entry.announce
        is_older = announce.timestamp_ms < previous.timestamp_ms or (
            announce.timestamp_ms == previous.timestamp_ms and announce.seq < previous.seq
        )
        if not is_older:
            entry.announce = announce
            entry.last_seen = now
        return False

    def expire(self) -> list[str]:
        """Drop peers silent for longer than ``peer_timeout_s``; return their ids."""
        now = self._clock()
        gone = [pid for pid, e in self._peers.items() if now - e.last_seen > self.peer_timeout_s]
        for pid in gone:
            del self._peers[pid]
        return gone

    def remove(self, peer_id: str) -> None:
        self._peers.pop(peer_id, None)

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def entries(self) -> list[PeerEntry]:
        return sorted(self._peers.values(), key=lambda e: e.announce.peer_id)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def now(self) -> float:
        return self._clock()
