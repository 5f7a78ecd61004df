"""Serving bench workloads and metrics: seeded request mixes, Poisson arrivals, latency summaries, SLO checks.

Pure data and arithmetic: this module knows nothing about engines or transformers. Every system in a run is
fed the same `BenchRequest`s and reports the same `RequestRecord`s, which are summarised here.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mix:
    """Length distributions: log-normal around a median, clipped."""

    name: str
    prompt_median: int
    prompt_sigma: float
    prompt_range: tuple[int, int]
    output_median: int
    output_sigma: float
    output_range: tuple[int, int]


DECODE_HEAVY = Mix("decode-heavy", 96, 0.5, (16, 384), 96, 0.3, (32, 160))
# Prompts up to twice the median: the TTFT target (k x the median prompt's isolated prefill) stays within reach of
# every prompt for any scheduler, so capacity measures scheduling rather than prompts no system could serve in time.
LONG_PROMPT = Mix("long-prompt", 512, 0.6, (128, 1024), 48, 0.4, (16, 96))


@dataclass(frozen=True)
class BenchRequest:
    arrival_s: float
    prompt_ids: list[int]
    max_new_tokens: int


LATE_GAPS_ALLOWED = 1  # inter-token gaps of one request that may exceed its TPOT target: one hiccup is forgiven


@dataclass
class RequestRecord:
    """What one system did with one request. Refused requests have no timings."""

    refused: bool = False
    abandoned: bool = False  # the client gave up once the request could no longer meet its SLO
    ttft_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)  # absolute times of each generated token
    start_s: float = 0.0  # when the request was sent
    num_tokens: int = 0
    predicted_ttft_s: float | None = None  # what the server predicted at admission, where it says

    @property
    def tpot_s(self) -> float | None:
        t = self.token_times_s
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None

    def itls_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in itertools.pairwise(t)]

    def meets(self, ttft_slo_s: float, tpot_slo_s: float, stalls: bool = True) -> bool:
        """TTFT within target, mean TPOT within target and, when `stalls`, at most `LATE_GAPS_ALLOWED` of the
        inter-token gaps over the target: a reader of a stream sees every stall, so a prefill that freezes the
        decodes for many token times misses the TPOT SLO even when the mean absorbs it (the per-request view
        of Sarathi-Serve's TBT SLO). `stalls=False`: the mean alone (vLLM's goodput TPOT)."""
        if self.refused or self.abandoned or self.ttft_s is None or self.ttft_s > ttft_slo_s:
            return False
        tpot = self.tpot_s
        if tpot is None:
            return True
        if tpot > tpot_slo_s:
            return False
        return not stalls or sum(g > tpot_slo_s for g in self.itls_s()) <= LATE_GAPS_ALLOWED


def _lognormal_int(rng: random.Random, median: int, sigma: float, bounds: tuple[int, int]) -> int:
    value = round(median * math.exp(rng.gauss(0.0, sigma)))
    return min(max(value, bounds[0]), bounds[1])


def make_requests(mix: Mix, n: int, rate_per_s: float, seed: int, vocab: int) -> list[BenchRequest]:
    """`n` requests of `mix` with Poisson arrivals at `rate_per_s` (inf: all at t=0). Same seed, same lengths
    and tokens whatever the rate: only the arrival times scale."""
    rng = random.Random(seed)
    lengths = [
        (
            _lognormal_int(rng, mix.prompt_median, mix.prompt_sigma, mix.prompt_range),
            _lognormal_int(rng, mix.output_median, mix.output_sigma, mix.output_range),
        )
        for _ in range(n)
    ]
    gaps = [rng.expovariate(1.0) for _ in range(n)]
    requests, t = [], 0.0
    for (p_len, o_len), gap in zip(lengths, gaps, strict=True):
        if math.isfinite(rate_per_s):
            t += gap / rate_per_s
        prompt = [rng.randrange(min(vocab, 256)) for _ in range(p_len)]
        requests.append(BenchRequest(t, prompt, o_len))
    return requests


def percentiles(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    """p50/p90/p99 (in ms by default) of `values`; empty dict when there are none."""
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return scale * ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


def summarize(
    records: list[RequestRecord], wall_s: float, ttft_slo_s: float, tpot_slo_s: float, stalls: bool = True
) -> dict:
    """Latency percentiles, output tok/s, goodput and SLO attainment of one run. `stalls`: whether the TPOT
    check counts stalls (see `RequestRecord.meets`); attainment under both checks is reported."""
    served = [r for r in records if not r.refused and r.ttft_s is not None]
    whole = [r for r in served if not r.abandoned]
    tokens = sum(r.num_tokens for r in served)
    with_stalls = sum(r.meets(ttft_slo_s, tpot_slo_s) for r in records)
    mean_only = sum(r.meets(ttft_slo_s, tpot_slo_s, stalls=False) for r in records)
    met = with_stalls if stalls else mean_only
    share = 1 / len(records) if records else 0.0
    return {
        "requests": len(records),
        "refused": sum(r.refused for r in records),
        "abandoned": sum(r.abandoned for r in records),
        "output_tokens": tokens,
        "wall_s": wall_s,
        "output_tok_s": tokens / wall_s if wall_s > 0 else 0.0,
        "goodput_req_s": met / wall_s if wall_s > 0 else 0.0,
        "slo_attainment": met * share,
        "slo_attainment_with_stalls": with_stalls * share,
        "slo_attainment_mean_tpot": mean_only * share,
        "ttft_ms": percentiles([r.ttft_s for r in served]),
        "tpot_ms": percentiles([r.tpot_s for r in whole if r.tpot_s is not None]),
        "itl_ms": percentiles([x for r in whole for x in r.itls_s()]),
        "e2e_ms": percentiles([r.token_times_s[-1] - r.start_s for r in whole if r.token_times_s]),
        "ttft_prediction": ttft_prediction(served),
    }


def ttft_prediction(records: list[RequestRecord]) -> dict:
    """How the server's TTFT predictions compare with the TTFTs achieved, over the requests it predicted for:
    signed error (predicted - achieved: positive is pessimistic) and absolute error relative to the achieved."""
    pairs = [(r.predicted_ttft_s, r.ttft_s) for r in records if r.predicted_ttft_s is not None and r.ttft_s]
    if not pairs:
        return {"requests": 0}
    return {
        "requests": len(pairs),
        "mean_error_ms": 1000 * statistics.mean(p - a for p, a in pairs),
        "mean_abs_relative_error": statistics.mean(abs(p - a) / a for p, a in pairs),
        "median_predicted_over_achieved": statistics.median(p / a for p, a in pairs),
        "pairs_ms": [[round(1000 * p, 2), round(1000 * a, 2)] for p, a in pairs],
    }


def median(values: list[float]) -> float:
    return statistics.median(values)
