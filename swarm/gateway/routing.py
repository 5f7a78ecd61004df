"""Choosing a serving peer for a request: peers that serve the requested model and are predicted to meet the
request's SLO targets, spread by their headroom; otherwise best predicted TTFT first. Baselines: random, and the
standard load balancer's least outstanding requests (this asker's requests in flight per peer).

Knows announces, the request's targets and prompt length, and what this asker has already sent where; nothing
about streams. A peer announces the TTFT of a probe-length prompt and its prefill rate, so a request's own TTFT
is predicted as the probe's queueing plus its own prompt at that rate. The announce is up to one heartbeat old,
so this asker's requests still waiting for their first token there are charged to that peer as extra queueing
(once decoding, a request is part of the load the peer itself reports).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols import PeerAnnounce
from protocols.messages import LOAD_PROBE_PROMPT_TOKENS

EMBEDDED_PREFIX = "swarm-embedded-"
DEAD_PEER_BACKOFF_S = 10.0
MIN_HEADROOM = 0.2  # share of a target kept in reserve for gossip staleness and prediction error


def serves_model(announce: PeerAnnounce, model: str | None) -> bool:
    """True when the peer serves ``model``: an exact model id, an embedded model's short name (``default``,
    ``tiny``), or None/"" for any model."""
    if "serve" not in announce.roles or not announce.model_id:
        return False
    if not model or announce.model_id == model:
        return True
    short = f"{EMBEDDED_PREFIX}{model}"  # shipped weights (the default), or seeded ones
    return announce.model_id == short or announce.model_id.startswith(f"{short}-seed")


@dataclass
class RouteState:
    """What one asker remembers between requests: its requests waiting for a first token, per peer, and peers
    to avoid."""

    awaiting_first_token: dict[str, int] = field(default_factory=dict)
    outstanding: dict[str, int] = field(default_factory=dict)  # requests in flight, until their last token
    avoid_until: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic  # injected by the simulator (virtual time)

    def avoid(self, peer_id: str, seconds: float) -> None:
        self.avoid_until[peer_id] = max(self.avoid_until.get(peer_id, 0.0), self.clock() + seconds)

    def avoided(self, peer_id: str) -> bool:
        return self.avoid_until.get(peer_id, 0.0) > self.clock()

    def earliest_retry_s(self) -> float:
        now = self.clock()
        waits = [t - now for t in self.avoid_until.values() if t > now]
        return min(waits) if waits else 0.0


def predicted_ttft_ms(announce: PeerAnnounce, queued: int, prompt_tokens: int | None = None) -> float:
    """The peer's own prediction for a probe-length prompt, moved to this request's prompt length at the peer's
    prefill rate, plus this asker's requests queued there, each costing at least a probe-length prefill. A peer
    that announces no prefill rate (1.0) is predicted as before: its probe TTFT, times the queue."""
    load = announce.load
    base = max(load.predicted_ttft_ms, 1.0)
    if load.prefill_tok_s <= 0 or prompt_tokens is None:
        return base * (1 + queued)
    probe_ms = 1000.0 * LOAD_PROBE_PROMPT_TOKENS / load.prefill_tok_s
    own_ms = 1000.0 * prompt_tokens / load.prefill_tok_s
    return max(base - probe_ms, 0.0) + own_ms + queued * probe_ms


def predicted_tpot_ms(announce: PeerAnnounce) -> float:
    """One decode step of the peer's current batch (its announced decode rate over its batch); 0 if unknown."""
    load = announce.load
    return 1000.0 * max(load.running, 1) / load.decode_tok_s if load.decode_tok_s > 0 else 0.0


def slo_headroom(
    announce: PeerAnnounce, queued: int, ttft_ms: float, tpot_ms: float | None, prompt_tokens: int | None = None
) -> float:
    """Share of the request's targets left over on this peer (1: idle and instant, <= 0: predicted to miss)."""
    headroom = 1.0 - predicted_ttft_ms(announce, queued, prompt_tokens) / ttft_ms
    if tpot_ms:
        headroom = min(headroom, 1.0 - predicted_tpot_ms(announce) / tpot_ms)
    return headroom


def rank_peers(
    announces: list[PeerAnnounce],
    model: str | None,
    state: RouteState,
    *,
    policy: str = "ttft",
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    prompt_tokens: int | None = None,
) -> list[PeerAnnounce]:
    """Peers able to take the request, best first. ``policy`` is "ttft", or a baseline: "random", or
    "least_loaded" (fewest of this asker's requests outstanding there, ties at random).

    "ttft" without a TTFT target: best predicted TTFT first. With targets: the peers predicted to meet them with
    `MIN_HEADROOM` to spare come first, drawn at random weighted by their headroom, so that load spreads over
    every peer that can serve the request in time (slow ones included) instead of piling onto the fastest; then
    the rest, best predicted TTFT first (their own admission decides).
    """
    candidates = [a for a in announces if serves_model(a, model) and not state.avoided(a.peer_id)]
    if policy == "random":
        random.shuffle(candidates)
        return candidates
    if policy == "least_loaded":
        random.shuffle(candidates)
        return sorted(candidates, key=lambda a: state.outstanding.get(a.peer_id, 0))
    if policy != "ttft":
        raise ValueError(f"unknown routing policy {policy!r}")
    queued = state.awaiting_first_token
    jitter = {a.peer_id: random.random() for a in candidates}  # break ties without always picking the same
    ttft = {a.peer_id: predicted_ttft_ms(a, queued.get(a.peer_id, 0), prompt_tokens) for a in candidates}
    by_ttft = sorted(candidates, key=lambda a: (ttft[a.peer_id], jitter[a.peer_id]))
    if not ttft_ms:
        return by_ttft
    room = {a.peer_id: slo_headroom(a, queued.get(a.peer_id, 0), ttft_ms, tpot_ms, prompt_tokens) for a in candidates}
    able = [a for a in by_ttft if room[a.peer_id] >= MIN_HEADROOM]
    # Weighted sampling without replacement: key u ** (1 / weight), largest first (Efraimidis-Spirakis).
    able.sort(key=lambda a: jitter[a.peer_id] ** (1.0 / room[a.peer_id]), reverse=True)
    return able + [a for a in by_ttft if room[a.peer_id] < MIN_HEADROOM]


def prompt_tokens_of(prompt_token_ids: list[int] | None, prompt: str | None, messages: list | None) -> int | None:
    """The request's prompt length in tokens where the asker knows it (token ids); for text, its UTF-8 bytes, an
    upper bound for byte-level and BPE tokenizers alike; None for chat messages (the template is the peer's)."""
    if prompt_token_ids:
        return len(prompt_token_ids)
    if prompt:
        return len(prompt.encode())
    return None
