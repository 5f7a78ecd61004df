"""Who is in the swarm: a bounded table of live peers, each the latest PeerAnnounce (the rarely-changing record)
merged with its latest PeerStatus (load, training and RL progress), expired after a few of its status periods.

Liveness comes from the peer's own gossip and from the transport, passed in by the node: an answer the peer gave
to a request of ours, or an open connection to it. A peer is expired only when all have been silent for its
expiry, so a busy machine that delays gossip does not lose peers it is still talking to; expiry itself is
measured in the peer's periods, stretched to the gaps this node actually observes between its messages
(swarm/runtime/gossip_policy.py). None lets a peer outlive its reachability: hearsay never refreshes an entry, an
answer vouches for one expiry, and an open connection (which a frozen process keeps open) for at most
`CONNECTED_GRACE_EXPIRIES` expiries past the peer's last message or answer.

Knows announces, statuses and a clock; nothing about sockets. Gossip announces are checked against their signed
origin before they reach this table; announces heard second-hand (peer exchange) are kept as hearsay: they fill
the table for a joiner but never replace what the peer said itself.

The table is a partial view: at most `max_peers` entries and `max_per_model` serving peers of any one model. A
full table admits a newcomer only in place of an entry past half its expiry, so a flood of identities (Sybil)
takes free places only and never evicts the live peers already known. A joiner learns serving peers from peer
exchange and gossip, so a sample of at most `max_per_model` per model is enough for routing (which picks among
`route_sample` of them per request anyway).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from protocols import PeerAnnounce
from protocols.status import PeerStatus
from swarm.runtime.gossip_policy import SizeEstimate, expiry_s, next_gap_s

CONNECTED_GRACE_EXPIRIES = 3.0  # an open connection alone keeps a silent peer this many expiries, then one more


@dataclass
class PeerEntry:
    announce: PeerAnnounce
    first_seen: float
    last_seen: float  # when the peer's own gossip last reached us (or the entry was made)
    timeout_s: float = 0.0  # silence after which the peer is dropped
    hearsay: bool = False  # heard from a third party, not (yet) from the peer itself
    status_seq: int = -1
    load_at: float = 0.0  # when the load in `announce` was measured (our clock)
    period_s: float = 0.0  # the status period the peer announces (0 until its first status)
    gap_s: float = 0.0  # observed gap between its messages reaching us (decaying max)
    answered_at: float = float("-inf")  # when it last answered a request of ours
    connected_at: float = float("-inf")  # when a connection to it was last seen open

    def age_s(self, now: float) -> float:
        return max(now - self.last_seen, 0.0)

    def live_at(self, timeout_s: float) -> float:
        """When we last had evidence the peer is there: its gossip, an answer, or an open connection (that one
        counts only up to `CONNECTED_GRACE_EXPIRIES` expiries past the others)."""
        heard = max(self.last_seen, self.answered_at)
        return max(heard, min(self.connected_at, heard + CONNECTED_GRACE_EXPIRIES * timeout_s))


def _serving_key(announce: PeerAnnounce) -> str | None:
    return announce.model_id if "serve" in announce.roles and announce.model_id else None


class Membership:
    """The membership table of one node. ``observe`` on every announce, ``observe_status`` on every status,
    ``expire`` periodically."""

    def __init__(
        self,
        self_id: str,
        peer_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_peers: int = 2048,
        max_per_model: int = 256,
    ) -> None:
        self.self_id = self_id
        self.peer_timeout_s = peer_timeout_s
        self.max_peers = max_peers
        self.max_per_model = max_per_model
        self._clock = clock
        self._peers: dict[str, PeerEntry] = {}
        self._per_model: Counter[str] = Counter()
        self.size = SizeEstimate()
        self.refused_full = 0  # newcomers turned away by a full table (or a full model sample)
        self._full_since: dict[str | None, float] = {}  # pool -> when a scan last found nothing to evict

    # ------------------------------------------------------------------ admission

    def _admit(self, announce: PeerAnnounce, now: float) -> bool:
        """Make room for a newcomer if the bounds allow; False when it must stay out."""
        model = _serving_key(announce)
        model_full = model is not None and self._per_model[model] >= self.max_per_model
        if model_full and not self._evict_stale(now, model):
            return False
        return len(self._peers) < self.max_peers or self._evict_stale(now, None)

    def _evict_stale(self, now: float, model: str | None) -> bool:
        """Drop the stalest entry (of ``model``'s serving peers if given) if it is past half its expiry."""
        if now - self._full_since.get(model, -1e18) < 1.0:
            return False  # scanned a moment ago: a flood of newcomers costs one scan per second, not one each
        pool = [e for e in self._peers.values() if model is None or _serving_key(e.announce) == model]
        stalest = min(pool, key=lambda e: e.live_at(self._timeout(e)), default=None)
        if stalest is None or now - stalest.live_at(self._timeout(stalest)) < 0.5 * self._timeout(stalest):
            self._full_since[model] = now
            return False
        self.remove(stalest.announce.peer_id)
        return True

    def _timeout(self, entry: PeerEntry) -> float:
        return entry.timeout_s or self.peer_timeout_s

    def _insert(self, announce: PeerAnnounce, now: float, hearsay: bool) -> None:
        self._peers[announce.peer_id] = PeerEntry(announce, now, now, self.peer_timeout_s, hearsay, -1, now)
        model = _serving_key(announce)
        if model is not None:
            self._per_model[model] += 1

    # ------------------------------------------------------------------ updates

    def observe(self, announce: PeerAnnounce, *, hearsay: bool = False) -> bool:
        """Record an announce; True when the peer is new to the table. Stale (older) announces are ignored, and so
        is hearsay about a peer we heard from directly."""
        if announce.peer_id == self.self_id:
            return False
        now = self._clock()
        if not hearsay:
            self.size.add(announce.peer_id, now)
        entry = self._peers.get(announce.peer_id)
        if entry is None:
            if not self._admit(announce, now):
                self.refused_full += 1
                return False
            self._insert(announce, now, hearsay)
            return True
        if hearsay and not entry.hearsay:
            return False
        previous = entry.announce
        is_older = announce.timestamp_ms < previous.timestamp_ms or (
            announce.timestamp_ms == previous.timestamp_ms and announce.seq < previous.seq
        )
        if not is_older:
            self._replace(entry, announce)
            entry.load_at = now
            if not hearsay:
                self._heard(entry, now)
        return False

    def _heard(self, entry: PeerEntry, now: float) -> None:
        """The peer's own message reached us: refresh it, and measure the gap since its previous one."""
        if not entry.hearsay:
            entry.gap_s = next_gap_s(entry.gap_s, now - entry.last_seen, self._timeout(entry))
            entry.timeout_s = expiry_s(entry.period_s, self.peer_timeout_s, entry.gap_s)
        entry.last_seen = now
        entry.hearsay = False

    def _replace(self, entry: PeerEntry, announce: PeerAnnounce) -> None:
        old, new = _serving_key(entry.announce), _serving_key(announce)
        if old != new:
            if old is not None:
                self._per_model[old] -= 1
            if new is not None:
                self._per_model[new] += 1
        entry.announce = announce

    def observe_status(self, status: PeerStatus) -> bool:
        """Merge a status into the peer's entry; False when the peer is unknown (its announce comes with the next
        refresh or peer exchange) or the status is older than the last one."""
        if status.peer_id == self.self_id:
            return False
        now = self._clock()
        self.size.add(status.peer_id, now)
        entry = self._peers.get(status.peer_id)
        if entry is None or status.seq <= entry.status_seq:
            return False
        entry.status_seq = status.seq
        entry.period_s = status.period_s
        self._heard(entry, now)
        changes: dict = {}
        if status.load is not None:
            changes["load"] = status.load
            entry.load_at = now
        if status.training is not None:
            changes["training"] = status.training
        if status.rl is not None:
            changes["rl"] = status.rl
        if changes:
            entry.announce = replace(entry.announce, **changes)
        return True

    def update_load(self, peer_id: str, load: object) -> None:
        """A load the peer gave when asked directly (routing's sample); the answer also vouches for it."""
        entry = self._peers.get(peer_id)
        if entry is not None:
            entry.announce = replace(entry.announce, load=load)
            entry.load_at = entry.answered_at = self._clock()

    def answered(self, peer_id: str) -> bool:
        """The peer answered a request of ours just now: reachable, whatever its gossip says. Changes nothing else;
        False when the peer is not in the table (an answer never makes an entry)."""
        entry = self._peers.get(peer_id)
        if entry is None:
            return False
        entry.answered_at = self._clock()
        return True

    def expire(self, connected: Iterable[str] = ()) -> list[str]:
        """Drop peers with no evidence of life for longer than their expiry; ``connected``: the peers a connection
        is open to now. Returns the ids dropped."""
        now = self._clock()
        for peer_id in connected:
            entry = self._peers.get(peer_id)
            if entry is not None:
                entry.connected_at = now
        gone = [pid for pid, e in self._peers.items() if now - e.live_at(self._timeout(e)) > self._timeout(e)]
        for pid in gone:
            self.remove(pid)
        self.size.expire(now, max((self._timeout(e) for e in self._peers.values()), default=self.peer_timeout_s))
        return gone

    def remove(self, peer_id: str) -> None:
        entry = self._peers.pop(peer_id, None)
        if entry is not None:
            model = _serving_key(entry.announce)
            if model is not None:
                self._per_model[model] -= 1
                if self._per_model[model] <= 0:
                    del self._per_model[model]

    # ------------------------------------------------------------------ views

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def entries(self) -> list[PeerEntry]:
        return sorted(self._peers.values(), key=lambda e: e.announce.peer_id)

    def serving_count(self, model_id: str) -> int:
        return self._per_model.get(model_id, 0)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def now(self) -> float:
        return self._clock()
