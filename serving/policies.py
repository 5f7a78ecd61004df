"""Scheduling policies, each a small class behind a small interface: order, token budget, admission, victim.

The scheduler composes them; each one reads request state and the latency model and answers one question.
They know nothing about tensors, threads or tokenizers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

from serving.config import ServingConfig
from serving.errors import OverloadedError
from serving.latency import LatencyModel
from serving.request import Request

MIN_RETRY_MS = 10


def queue_key(req: Request) -> tuple[int, float]:
    """Higher priority first, then earlier arrival."""
    return (-req.priority, req.arrival_s)


def decoding(running: Sequence[Request]) -> list[Request]:
    return [r for r in running if r.num_computed_tokens > 0 and r.num_pending_tokens <= 1]


def tightest_tpot_s(requests: Sequence[Request], default_tpot_ms: float | None) -> float | None:
    targets = [r.params.tpot_ms or default_tpot_ms for r in requests]
    targets = [t for t in targets if t]
    return min(targets) / 1000.0 if targets else None


class TokenBudgetPolicy(ABC):
    """How many tokens the next step may compute."""

    @abstractmethod
    def budget(self, running: Sequence[Request], extra_tpot_ms: float | None = None) -> int:
        """Token budget given the running requests (and one more request's TPOT target, when asked)."""


class FixedBudget(TokenBudgetPolicy):
    def __init__(self, max_batch_tokens: int) -> None:
        self.max_batch_tokens = max_batch_tokens

    def budget(self, running: Sequence[Request], extra_tpot_ms: float | None = None) -> int:
        return self.max_batch_tokens


class SloBudget(TokenBudgetPolicy):
    """Largest budget whose predicted step time fits the tightest TPOT target among running requests."""

    def __init__(self, latency: LatencyModel, config: ServingConfig) -> None:
        self.latency = latency
        self.config = config

    def budget(self, running: Sequence[Request], extra_tpot_ms: float | None = None) -> int:
        cap = self.config.max_batch_tokens
        tpot_s = tightest_tpot_s(running, self.config.default_tpot_ms)
        if extra_tpot_ms is not None:
            tpot_s = min(tpot_s or math.inf, extra_tpot_ms / 1000.0)
        if tpot_s is None or tpot_s == math.inf:
            return cap
        decodes = [(1, r.num_tokens) for r in decoding(running)]
        prefilling = [r for r in running if r.num_pending_tokens > 1]
        chunk_ctx = prefilling[0].num_computed_tokens if prefilling else 0
        room = self.latency.max_prefill_tokens(tpot_s, decodes, chunk_ctx, max(cap - len(decodes), 0))
        return max(len(decodes) + max(room, self.config.min_chunk_tokens), 1)


class PreemptionPolicy(ABC):
    """Which running request gives its KV blocks back when a higher one needs blocks."""

    @abstractmethod
    def victim(self, candidates: Sequence[Request]) -> Request:
        """Pick from a non-empty list of running requests."""


class LowestPriorityLatest(PreemptionPolicy):
    def victim(self, candidates: Sequence[Request]) -> Request:
        return max(candidates, key=queue_key)


class AdmissionPolicy(ABC):
    """Decides at submit time, before a request enters the queue, whether it may."""

    @abstractmethod
    def check(
        self, req: Request, running: Sequence[Request], waiting: Sequence[Request], inflight_left_s: float = 0.0
    ) -> None:
        """Return to admit; raise `OverloadedError` to refuse. `inflight_left_s`: predicted rest of the step
        that is running now."""


class QueueBound(AdmissionPolicy):
    """FCFS admission: everything is accepted until the waiting queue is full."""

    def __init__(self, config: ServingConfig, latency: LatencyModel) -> None:
        self.config = config
        self.latency = latency

    def check(
        self, req: Request, running: Sequence[Request], waiting: Sequence[Request], inflight_left_s: float = 0.0
    ) -> None:
        if len(waiting) >= self.config.max_waiting_requests:
            step_s = self.latency.decode_step_s(max(len(running), 1), 256)
            raise OverloadedError("waiting queue is full", retry_after_ms=max(MIN_RETRY_MS, 1000 * step_s))


class SloAdmission(QueueBound):
    """Refuses a request whose predicted TTFT misses its target, or whose TPOT the decode batch cannot meet."""

    def __init__(self, config: ServingConfig, latency: LatencyModel, budget: TokenBudgetPolicy) -> None:
        super().__init__(config, latency)
        self.budget = budget

    def check(
        self, req: Request, running: Sequence[Request], waiting: Sequence[Request], inflight_left_s: float = 0.0
    ) -> None:
        super().check(req, running, waiting, inflight_left_s)
        decoders = decoding(running)
        tpot_s = tightest_tpot_s([*running, req], self.config.default_tpot_ms)
        if tpot_s is not None and decoders:
            step_s = self.latency.step_s([(1, r.num_tokens) for r in decoders] + [(1, len(req.prompt_ids))])
            if step_s > tpot_s * self.config.admission_headroom:
                left = min(r.max_new_tokens - len(r.output_ids) for r in decoders)
                retry = 1000 * left * step_s
                raise OverloadedError(f"decode batch cannot meet tpot {1000 * tpot_s:.1f} ms", retry)
        if req.params.ttft_ms is None:
            return
        ttft_s = predict_ttft_s(self.latency, self.budget, req, running, waiting, inflight_left_s)
        if ttft_s * 1000 > req.params.ttft_ms * self.config.admission_headroom:
            raise OverloadedError(
                f"predicted ttft {1000 * ttft_s:.1f} ms exceeds {req.params.ttft_ms:.1f} ms",
                retry_after_ms=max(MIN_RETRY_MS, 1000 * ttft_s - req.params.ttft_ms * self.config.admission_headroom),
            )


def predict_ttft_s(
    latency: LatencyModel,
    budget: TokenBudgetPolicy,
    req: Request,
    running: Sequence[Request],
    waiting: Sequence[Request],
    inflight_left_s: float = 0.0,
) -> float:
    """Time until `req`'s first token if admitted now: what is left of the step in flight, the prefill of
    everything ahead of it (counted whole, as if the step in flight had not advanced it), then its own."""
    decodes = [(1, r.num_tokens) for r in decoding(running)]
    tokens = budget.budget([*running, *waiting], req.params.tpot_ms)
    chunk = max(tokens - len(decodes), 1)
    ahead = [r for r in running if r.num_pending_tokens > 1]
    ahead += [r for r in waiting if queue_key(r) <= queue_key(req)]
    prefills = [(r.num_pending_tokens, r.num_computed_tokens) for r in ahead]
    prefills.append((req.num_pending_tokens, req.num_computed_tokens))
    total = latency.prefill_s(prefills, chunk, decodes)
    return total + inflight_left_s
