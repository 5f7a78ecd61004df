"""Which serving peers a request's route is chosen among: `d` of them drawn at random (power of d choices), so
routing work per request stays flat as the swarm grows and no peer, however good the figures it reports, can be
in more than its share of the draws.

Pure: the caller passes the candidates and a random generator; the load of the drawn peers is refreshed (asked on
demand, swarm/runtime/load_probe.py) before `rank_peers` orders them. Knows announces and models, nothing about streams.
"""

from __future__ import annotations

import random

from protocols import PeerAnnounce
from swarm.gateway.routing import serves_model


def sample_candidates(
    announces: list[PeerAnnounce], model: str | None, d: int, rng: random.Random | None = None
) -> list[PeerAnnounce]:
    """Up to ``d`` serving peers of ``model`` drawn uniformly without replacement (all of them when <= d)."""
    candidates = [a for a in announces if serves_model(a, model)]
    if len(candidates) <= d:
        return candidates
    return (rng or random).sample(candidates, d)


def is_stale(load_at: float, now: float, max_age_s: float) -> bool:
    """A load measured longer than ``max_age_s`` ago is asked for again before it decides a route."""
    return now - load_at > max_age_s
