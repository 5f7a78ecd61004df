"""What the engine has served, as histograms and counters: TTFT, time per output token, inter-token and end-to-end
latency, prompt and generation tokens, finished requests by reason and refusals by code.

The engine records into it from its own thread; readers (the HTTP layer, the status line) take a `snapshot()`.
Knows no Prometheus, no HTTP and no clock: callers pass durations in seconds. Bucket bounds follow vLLM's, so
dashboards and alerts written for vLLM read these figures the same way.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from dataclasses import dataclass, field

# Upper bounds in seconds, as vLLM's v1 metrics use them (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                  20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
TOKEN_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                   40.0, 80.0)  # fmt: skip
E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


@dataclass
class Histogram:
    """Counts per upper bound (the last slot is +Inf), their sum and their number."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value_s: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value_s)] += 1
        self.total += value_s
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, +Inf last: Prometheus' `le` form."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total, self.count)


@dataclass
class ServingSnapshot:
    """A consistent copy of every figure, taken under the lock."""

    ttft: Histogram
    tpot: Histogram
    inter_token: Histogram
    e2e: Histogram
    prompt_tokens: int
    generation_tokens: int
    finished: dict[str, int]  # by finish reason
    refused: dict[str, int]  # by ErrorCode name
    slo: dict[str, int] = field(default_factory=dict)  # requests with targets: "met" / "missed", as the engine saw


class ServingStats:
    """Thread-safe: the engine thread records, any thread snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ttft = Histogram(TTFT_BUCKETS_S)
        self._tpot = Histogram(TOKEN_BUCKETS_S)
        self._inter_token = Histogram(TOKEN_BUCKETS_S)
        self._e2e = Histogram(E2E_BUCKETS_S)
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._finished: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._slo: Counter[str] = Counter()

    def first_token(self, ttft_s: float) -> None:
        with self._lock:
            self._ttft.observe(ttft_s)

    def tokens(self, count: int, gap_s: float | None) -> None:
        """`count` tokens generated; `gap_s` since the request's previous token (None for its first)."""
        with self._lock:
            self._generation_tokens += count
            if gap_s is not None:
                self._inter_token.observe(gap_s)

    def finished(self, reason: str, prompt_tokens: int, e2e_s: float, tpot_s: float | None) -> None:
        with self._lock:
            self._finished[reason] += 1
            self._prompt_tokens += prompt_tokens
            self._e2e.observe(e2e_s)
            if tpot_s is not None:
                self._tpot.observe(tpot_s)

    def slo_outcome(self, met: bool) -> None:
        with self._lock:
            self._slo["met" if met else "missed"] += 1

    def refused(self, code: str) -> None:
        with self._lock:
            self._refused[code] += 1

    def snapshot(self) -> ServingSnapshot:
        with self._lock:
            return ServingSnapshot(
                self._ttft.copy(), self._tpot.copy(), self._inter_token.copy(), self._e2e.copy(),
                self._prompt_tokens, self._generation_tokens, dict(self._finished), dict(self._refused),
                dict(self._slo),
            )  # fmt: skip
