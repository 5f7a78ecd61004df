"""How often a node gossips, as the swarm grows: the swarm's size estimated from a bounded sketch of the peer ids it
hears, the status and announce periods derived from it, and how long a silent peer is kept.

Pure decisions on numbers and ids, the same code in a node and in the simulator (swarm/sim/). Knows nothing about
sockets or clocks: callers pass the time in.

Why periods grow with N: gossipsub delivers every message to every subscriber, so a node receives N / period
messages per second. With period = N / budget, each node receives about `budget` status messages per second
whatever N is, while a joining node is still known within gossip's log N hops (it announces itself at once).
"""

from __future__ import annotations

import hashlib
import os

from protocols.status import MAX_STATUS_PERIOD_S

SIZE_SKETCH_K = 256  # ids kept by the size estimate: relative error about 1 / sqrt(K) = 6% once N > K
STATUS_MISSES = 3  # a peer is dropped after this many of its status periods of silence
GAP_DECAY = 0.75  # the observed gap between a peer's messages falls back this much per message after a slow one
ANNOUNCE_EVERY_STATUS = 5  # the full announce is refreshed every this many status periods (and on every change)
MAX_SWARM_ESTIMATE = 10_000_000


def status_period_s(n_est: float, heartbeat_s: float, budget_msgs_s: float) -> float:
    """Period of this node's PeerStatus: the heartbeat while the swarm is small, N / budget past that."""
    return min(max(heartbeat_s, n_est / budget_msgs_s), MAX_STATUS_PERIOD_S)


def announce_period_s(n_est: float, heartbeat_s: float, budget_msgs_s: float) -> float:
    """Period of the full PeerAnnounce refresh (it is also sent on any change, and when a first mesh link forms)."""
    return ANNOUNCE_EVERY_STATUS * status_period_s(n_est, heartbeat_s, budget_msgs_s)


def expiry_s(peer_period_s: float, floor_s: float, observed_gap_s: float = 0.0) -> float:
    """How long a peer may stay silent: `STATUS_MISSES` of its periods, at least the configured ``peer_timeout_s``.
    The period is the one it announces or, when its messages reach this node further apart than that (a busy
    sender, a slow mesh, queues on the way), the gap this node observes: expiry adapts to the delivery the swarm
    actually achieves. Both are capped by `MAX_STATUS_PERIOD_S` (a longer announced period is refused at decoding),
    so no peer lives longer than it could by announcing the longest period allowed."""
    period = min(max(peer_period_s, observed_gap_s), MAX_STATUS_PERIOD_S)
    return max(floor_s, STATUS_MISSES * period)


def next_gap_s(previous_gap_s: float, gap_s: float, expiry_now_s: float) -> float:
    """The observed gap after a message ``gap_s`` after the previous one: a slow delivery lifts it at once, and it
    decays by `GAP_DECAY` per message once deliveries are regular again. A gap counts up to the expiry in force
    (a longer silence was bridged by the transport's liveness, not by gossip), so one message can lift the expiry
    by at most `STATUS_MISSES` times."""
    return max(min(gap_s, expiry_now_s), previous_gap_s * GAP_DECAY)


class SizeEstimate:
    """Estimate of the swarm's size from the ids heard recently: a bottom-K sketch of keyed hashes (exact below K
    ids, (K - 1) / h_K above). The key is this node's secret, so nobody can craft ids that dominate the sketch;
    an attacker with many identities inflates the estimate only in proportion to its identities, and the periods
    it drives are capped (`MAX_STATUS_PERIOD_S`). Memory: K entries."""

    def __init__(self, k: int = SIZE_SKETCH_K, salt: bytes | None = None) -> None:
        self.k = k
        self._salt = salt if salt is not None else os.urandom(16)
        self._kept: dict[str, tuple[float, float]] = {}  # peer id -> (hash in [0, 1), last heard)

    def _hash(self, peer_id: str) -> float:
        digest = hashlib.blake2b(peer_id.encode(), key=self._salt, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def add(self, peer_id: str, now: float) -> None:
        entry = self._kept.get(peer_id)
        if entry is not None:
            self._kept[peer_id] = (entry[0], now)
            return
        h = self._hash(peer_id)
        if len(self._kept) < self.k:
            self._kept[peer_id] = (h, now)
            return
        worst = max(self._kept, key=lambda p: self._kept[p][0])
        if h < self._kept[worst][0]:
            del self._kept[worst]
            self._kept[peer_id] = (h, now)

    def expire(self, now: float, horizon_s: float) -> None:
        for peer_id in [p for p, (_, seen) in self._kept.items() if now - seen > horizon_s]:
            del self._kept[peer_id]

    def estimate(self) -> float:
        """Peers heard, this node included."""
        if len(self._kept) < self.k:
            return float(len(self._kept) + 1)
        h_k = max(h for h, _ in self._kept.values())
        return min((self.k - 1) / max(h_k, 1e-12), MAX_SWARM_ESTIMATE) + 1

    def __len__(self) -> int:
        return len(self._kept)
