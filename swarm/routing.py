"""Choosing a serving peer for a request: peers that serve the requested model, best predicted TTFT first.

Knows announces and what this asker has already sent where; nothing about streams. The predicted TTFT a peer
gossips is up to one heartbeat old, so this asker's requests still waiting for their first token there are charged
to that peer as extra queueing (once decoding, a request is part of the load the peer itself reports).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from protocols import PeerAnnounce

EMBEDDED_PREFIX = "swarm-embedded-"
DEAD_PEER_BACKOFF_S = 10.0


def serves_model(announce: PeerAnnounce, model: str | None) -> bool:
    """True when the peer serves ``model``: an exact model id, an embedded model's short name (``default``,
    ``tiny``), or None/"" for any model."""
    if "serve" not in announce.roles or not announce.model_id:
        return False
    if not model or announce.model_id == model:
        return True
    return announce.model_id.startswith(f"{EMBEDDED_PREFIX}{model}-seed")


@dataclass
class RouteState:
    """What one asker remembers between requests: its requests waiting for a first token, per peer, and peers
    to avoid."""

    awaiting_first_token: dict[str, int] = field(default_factory=dict)
    avoid_until: dict[str, float] = field(default_factory=dict)

    def avoid(self, peer_id: str, seconds: float) -> None:
        self.avoid_until[peer_id] = max(self.avoid_until.get(peer_id, 0.0), time.monotonic() + seconds)

    def avoided(self, peer_id: str) -> bool:
        return self.avoid_until.get(peer_id, 0.0) > time.monotonic()

    def earliest_retry_s(self) -> float:
        now = time.monotonic()
        waits = [t - now for t in self.avoid_until.values() if t > now]
        return min(waits) if waits else 0.0


def predicted_ttft_ms(announce: PeerAnnounce, queued: int) -> float:
    """The peer's own prediction, plus this asker's requests queued there, each costing at least a prefill."""
    base = max(announce.load.predicted_ttft_ms, 1.0)
    return base * (1 + queued)


def rank_peers(
    announces: list[PeerAnnounce], model: str | None, state: RouteState, *, policy: str = "ttft"
) -> list[PeerAnnounce]:
    """Peers able to take the request, best first. ``policy`` is "ttft" or "random" (the baseline)."""
    candidates = [a for a in announces if serves_model(a, model) and not state.avoided(a.peer_id)]
    if policy == "random":
        random.shuffle(candidates)
        return candidates
    if policy != "ttft":
        raise ValueError(f"unknown routing policy {policy!r}")
    jitter = {a.peer_id: random.random() for a in candidates}  # break ties without always picking the same
    return sorted(
        candidates,
        key=lambda a: (predicted_ttft_ms(a, state.awaiting_first_token.get(a.peer_id, 0)), jitter[a.peer_id]),
    )
