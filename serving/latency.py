"""Latency model of this hardware: predicted step time from what a step computes, profiled and cached on disk.

step_s = c0 + c1 * tokens + c2 * requests + c3 * attention_work + c4 * kv_read, where attention_work sums, over
the step's chunks, chunk tokens x context length, and kv_read sums the context read back from the paged cache
(every decode's, and every chunk's after a prompt's first: gathering it costs per context token, whatever the
chunk's size, so a small chunk late in a long prompt costs more than its attention work says). The coefficients
come from timing real runner steps on synthetic plans.
Online, every measured step recalibrates two factors, one on the per-step and per-request overhead (c0, c2) and
one on the compute (c1, c3, c4), by exponentially forgetting least squares on relative error: a machine that gets
busier or quieter, or a profile taken under other load, is followed for decode-only steps and prefill chunks
alike (one scalar would learn the decode steps, which are most steps, and misjudge every chunk). What is left,
the noise of a shared machine, is measured too: a high quantile of recent measured / predicted ratios of steps
that carry a prefill chunk beside decodes (`step_margin`), which step budgets divide their limit by.
TTFT predictions are calibrated against the TTFTs achieved: the ratios achieved / predicted of recent admitted
requests give the expected TTFT (their median) and a low quantile, the most favourable error seen often enough
that a prediction still over target after it is a miss with confidence (`ttft_refusal_factor`).
This module knows nothing about SLOs or requests: it turns step shapes into seconds.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

StepShape = Sequence[tuple[int, int]]  # (chunk tokens, context length after the chunk) per request
FEATURE_SCALE = (1.0, 1e-3, 1e-2, 1e-6, 1e-3)  # keeps the least-squares columns comparable
NUM_FEATURES = len(FEATURE_SCALE)
TTFT_WINDOW = 64  # recent admitted requests whose achieved / predicted TTFT calibrates the predictions
TTFT_MIN_SAMPLES = 8  # fewer ratios than this: no quantile yet, refuse only what the best ratio seen makes late
# Refuse a request only when at least this share of recent ratios would make it late: a refusal is a sure miss,
# and at the load where 90% of requests must meet their targets it sheds nothing that saves another request.
MISS_CONFIDENCE = 0.97
RATIO_BOUNDS = (0.05, 20.0)  # one absurd sample (a stalled machine) must not decide the quantiles alone
OVERHEAD, COMPUTE = (0, 2), (1, 3, 4)  # feature columns of the two calibrated parts of a step
FACTOR_BOUNDS = (0.2, 5.0)  # how far the measured steps may move the profile, either way
CALIBRATION_DECAY = 0.995  # per measured step: about the last 200 steps decide the factors
CALIBRATION_PRIOR = 2.0  # in steps: pulls a part no recent step exercised toward the other's factor
MARGIN_WINDOW = 64  # recent mixed steps (decodes and a prefill chunk) whose prediction error sizes the margin
MARGIN_MIN_SAMPLES = 8  # fewer than this: the largest error seen so far (within bounds)
# A mixed step over its limit is a late token for every decode in it. Plan for the error three in four recent mixed
# steps stayed within: a higher quantile chases the seconds-long stalls of a shared machine, which no chunk size
# avoids, and shrinks every chunk (more steps beside each decode, each one a chance to be late, and later TTFTs);
# the share of the target left unplanned (`tpot_budget_share`) absorbs the rest.
MARGIN_QUANTILE = 0.75
MARGIN_BOUNDS = (1.0, 2.0)


def features(shape: StepShape) -> list[float]:
    tokens = sum(n for n, _ in shape)
    work = sum(n * ctx for n, ctx in shape)
    kv_read = sum(ctx for n, ctx in shape if ctx > n)  # chunks that start past 0 read their context back
    raw = [1.0, float(tokens), float(len(shape)), float(work), float(kv_read)]
    return [r * s for r, s in zip(raw, FEATURE_SCALE, strict=True)]


@dataclass
class LatencyModel:
    """Linear step-time model plus an online correction factor."""

    coefficients: list[float]
    key: str = ""
    correction: float = 1.0
    slowdown: float = 1.0  # the engine's artificial slowdown factor, applied to predictions
    samples: list[list[float]] = field(default_factory=list)
    factors: list[float] = field(default_factory=lambda: [1.0, 1.0])  # (overhead, compute) measured / profiled
    _normal: list[float] = field(default_factory=lambda: [0.0] * 5)  # decayed sums xx', xy, yy', x1, y1
    ttft_ratios: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_WINDOW))  # achieved / predicted
    step_errors: deque[float] = field(default_factory=lambda: deque(maxlen=MARGIN_WINDOW))  # mixed: measured / pred

    def __post_init__(self) -> None:
        # Profiles of an older, shorter feature set have no term for what they did not measure.
        self.coefficients = [*self.coefficients, *[0.0] * (NUM_FEATURES - len(self.coefficients))]

    def step_s(self, shape: StepShape) -> float:
        """Predicted seconds of one step computing `shape`."""
        return self._calibrated(features(shape)) * self.slowdown

    def profiled_step_s(self, shape: StepShape) -> float:
        """The profile's seconds for `shape`: no correction, no slowdown."""
        return max(sum(c * f for c, f in zip(self.coefficients, features(shape), strict=True)), 1e-5)

    def _parts(self, scaled: Sequence[float]) -> tuple[float, float]:
        """Profiled (overhead, compute) seconds of scaled feature sums."""
        c = self.coefficients
        return sum(c[i] * scaled[i] for i in OVERHEAD), sum(c[i] * scaled[i] for i in COMPUTE)

    def _calibrated(self, scaled: Sequence[float]) -> float:
        overhead, compute = self._parts(scaled)
        return max(self.factors[0] * overhead + self.factors[1] * compute, 1e-5)

    def prefill_s(self, prefills: Sequence[tuple[int, int]], chunk: int, decodes: StepShape) -> float:
        """Seconds to prefill every (pending tokens, start position) of `prefills`, in order, in chunks of
        `chunk` tokens, while `decodes` run beside them and each prefilled request joins the decodes.

        A closed form of the sum over steps (O(len) arithmetic), so admission stays cheap with a long queue.
        """
        pending = sum(n for n, _ in prefills)
        if pending <= 0:
            return 0.0
        chunk = max(1, min(chunk, pending))
        steps = math.ceil(pending / chunk)
        work = sum(n * (start + n / 2) for n, start in prefills) + pending * chunk / 2
        # Requests prefilled earlier decode during later ones: on average half of them are decoding.
        joined = (len(prefills) - 1) / 2
        dec_count = len(decodes) + joined
        dec_work = sum(ctx for _, ctx in decodes) + joined * sum(n + s for n, s in prefills) / len(prefills)
        per_step = [1.0, dec_count, 1.0 + dec_count, dec_work, dec_work]
        total = [steps * f for f in per_step]
        total[1] += pending
        total[3] += work
        # Every chunk but a prompt's first reads its context back: about the prompt's middle plus half a chunk.
        for n, start in prefills:
            k = math.ceil(n / chunk)
            total[4] += k * (start + (n + min(chunk, n)) / 2) - (min(chunk, n) if start == 0 else 0)
        return self._calibrated([f * k for f, k in zip(total, FEATURE_SCALE, strict=True)]) * self.slowdown

    def decode_step_s(self, num_decodes: int, mean_context: int) -> float:
        return self.step_s([(1, mean_context)] * num_decodes) if num_decodes else 0.0

    def max_prefill_tokens(self, budget_s: float, decodes: StepShape, chunk_context: int, limit: int) -> int:
        """Most prefill tokens (one chunk at `chunk_context`) that fit beside `decodes` within `budget_s`."""
        lo, hi = 0, limit
        while lo < hi:  # step_s grows with tokens: bisect, at most log2(limit) evaluations
            mid = (lo + hi + 1) // 2
            if self.step_s([*decodes, (mid, chunk_context + mid)]) <= budget_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def observe(self, shape: StepShape, measured_s: float, weight: float = 0.05) -> None:
        """Fold one measured step into the calibration: `correction`, the smoothed measured / profiled ratio of
        whole steps, and the two factors (see the module's docstring). One outlier moves neither far: the ratio
        is clamped, and the factors are a least-squares fit over many steps, within `FACTOR_BOUNDS`."""
        ratio = min(max(measured_s / self.profiled_step_s(shape), 0.25), 8.0)
        if any(n > 1 for n, _ in shape) and any(n == 1 and ctx > 1 for n, ctx in shape):
            self.step_errors.append(measured_s / self._calibrated(features(shape)))
        self.correction = min(max((1 - weight) * self.correction + weight * ratio, 0.25), 8.0)
        overhead, compute = self._parts(features(shape))
        total = overhead + compute
        if total <= 0:
            return
        measured_s = total * ratio  # the clamped measurement
        # Rows scaled by 1 / measured: relative error, so short decode steps count as much as long chunks.
        x, y = overhead / measured_s, compute / measured_s
        n = self._normal
        for i, v in enumerate((x * x, x * y, y * y, x, y)):
            n[i] = CALIBRATION_DECAY * n[i] + v
        self.factors = self._solve()

    def _solve(self) -> list[float]:
        """Ridge least squares of factors (a, b) in a * overhead + b * compute = measured, pulled toward the
        whole-step correction by `CALIBRATION_PRIOR` steps' worth of weight."""
        xx, xy, yy, x1, y1 = self._normal
        rho, prior = CALIBRATION_PRIOR, self.correction
        a11, a12, a22 = xx + rho, xy, yy + rho
        b1, b2 = x1 + rho * prior, y1 + rho * prior
        det = a11 * a22 - a12 * a12
        if det <= 0:
            return [prior, prior]
        lo, hi = FACTOR_BOUNDS
        return [min(max((b1 * a22 - b2 * a12) / det, lo), hi), min(max((a11 * b2 - a12 * b1) / det, lo), hi)]

    def step_margin(self) -> float:
        """What step budgets divide their limit by: the `MARGIN_QUANTILE` of recent mixed steps' measured /
        predicted (before each one was learnt from), within `MARGIN_BOUNDS`; 1 before any mixed step."""
        errors = sorted(self.step_errors)
        if not errors:
            return MARGIN_BOUNDS[0]
        pick = errors[-1] if len(errors) < MARGIN_MIN_SAMPLES else errors[int(MARGIN_QUANTILE * len(errors))]
        return min(max(pick, MARGIN_BOUNDS[0]), MARGIN_BOUNDS[1])

    def observe_ttft(self, predicted_s: float, actual_s: float) -> None:
        """Record one admitted request's raw predicted TTFT against its achieved TTFT: the queue model ignores
        scheduling overheads, decodes that finish while the queue waits and machine noise, so it learns here
        how far off it runs (either way)."""
        if predicted_s < 1e-3:
            return
        self.ttft_ratios.append(min(max(actual_s / predicted_s, RATIO_BOUNDS[0]), RATIO_BOUNDS[1]))

    @property
    def ttft_correction(self) -> float:
        """Expected achieved / predicted TTFT: the median recent ratio (1 before any)."""
        return statistics.median(self.ttft_ratios) if self.ttft_ratios else 1.0

    def ttft_refusal_factor(self) -> float:
        """The ratio a refusal is judged by: the (1 - MISS_CONFIDENCE) quantile of recent ratios, so a request
        whose prediction times it still misses its target would have missed under 97% of the errors seen. With
        few samples, the smallest ratio seen (at most 1): refusing what could be served is a sure miss."""
        ratios = sorted(self.ttft_ratios)
        if len(ratios) < TTFT_MIN_SAMPLES:
            return min([1.0, *ratios])
        return ratios[int((1 - MISS_CONFIDENCE) * len(ratios))]

    def to_json(self) -> dict:
        return {"coefficients": self.coefficients, "key": self.key, "samples": self.samples}

    @classmethod
    def from_json(cls, data: dict) -> LatencyModel:
        return cls(coefficients=[float(c) for c in data["coefficients"]], key=str(data["key"]))


def fit(samples: list[tuple[StepShape, float]], key: str = "") -> LatencyModel:
    """Least squares on relative error (rows scaled by 1/time, so short steps count as much as long ones);
    a negative coefficient is dropped and the rest refitted."""
    y = torch.tensor([t for _, t in samples], dtype=torch.float64)
    x = torch.tensor([features(s) for s, _ in samples], dtype=torch.float64) / y[:, None]
    ones = torch.ones_like(y)
    active = list(range(x.shape[1]))
    coef = torch.zeros(x.shape[1], dtype=torch.float64)
    for _ in range(x.shape[1]):
        sol = torch.linalg.lstsq(x[:, active], ones[:, None]).solution[:, 0]
        coef = torch.zeros(x.shape[1], dtype=torch.float64)
        coef[active] = sol
        negative = [a for a, c in zip(active, sol.tolist(), strict=True) if c < 0]
        if not negative:
            break
        active = [a for a in active if a not in negative]
    rows = [[*features(s), t] for s, t in samples]
    return LatencyModel(coefficients=coef.tolist(), key=key, samples=rows)


def profile_shapes(max_batch_tokens: int, max_context: int) -> list[StepShape]:
    """Synthetic step shapes covering decode batches, prefill chunks and mixes of both, including the small chunks
    deep into long prompts that step budgets cut (they separate the context read from the attention work)."""
    ctx_hi = min(512, max_context - 1)
    ctx_lo = min(64, ctx_hi)
    ctx_long = min(1024, max_context - 1)
    shapes: list[StepShape] = []
    for batch in (1, 8, 32):
        for ctx in (ctx_lo, ctx_hi):
            shapes.append([(1, ctx)] * batch)
    for chunk in (32, 128, 512):
        chunk = min(chunk, max_batch_tokens, ctx_hi)
        shapes.append([(chunk, chunk)])
        shapes.append([(chunk, min(chunk + ctx_hi, max_context))])
        shapes.append([(1, ctx_lo)] * 8 + [(chunk, chunk)])
    for chunk in (16, 64):
        chunk = min(chunk, max_batch_tokens, ctx_long)
        shapes.append([(chunk, ctx_long)])
        shapes.append([(1, ctx_hi)] * 8 + [(chunk, ctx_long)])
    shapes.append([(1, ctx_long)] * 8)
    return shapes


def profile(
    run_shape: Callable[[StepShape], None], shapes: list[StepShape], repeats: int = 3, key: str = ""
) -> LatencyModel:
    """Time `run_shape` on each shape (median of `repeats`, after one warm-up) and fit the model."""
    run_shape(shapes[0])
    samples = []
    for shape in shapes:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run_shape(shape)
            times.append(time.perf_counter() - start)
        samples.append((shape, statistics.median(times)))
    return fit(samples, key)


def load_cached(path: Path, key: str) -> LatencyModel | None:
    """The cached model at `path` if it was profiled for `key` (same model, device, dtype, threads)."""
    try:
        data = json.loads(path.read_text())
        model = LatencyModel.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if model.key != key or len(data["coefficients"]) != NUM_FEATURES or not all(map(math.isfinite, model.coefficients)):
        return None
    return model


def save_cached(path: Path, model: LatencyModel) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # nodes started together profile the same model
    tmp.write_text(json.dumps(model.to_json()))
    tmp.replace(path)


def cache_key(parts: dict) -> str:
    return json.dumps(parts, sort_keys=True)
