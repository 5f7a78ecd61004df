"""Scheduling policies, each a small class behind a small interface: order, token budget, admission, victim.

The scheduler composes them; each one reads request state and the latency model and answers one question.
They know nothing about tensors, threads or tokenizers.
"""

from __future__ import annotations

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


def ttft_missed(req: Request, now: float) -> bool:
    """Whether `req` has a TTFT target that passed before its first token: a miss, whatever happens next."""
    ttft_ms = req.params.ttft_ms
    return bool(ttft_ms) and req.first_token_s is None and now - req.arrival_s > ttft_ms / 1000.0


def prefill_key(req: Request, now: float) -> tuple[int, bool, float]:
    """Order of the prompts to prefill under SLOs: higher priority first; within one priority, a prompt whose
    TTFT target has passed goes after every prompt that can still meet its own (served first, it would only
    make them late too; it still gets whatever those leave, so it is delayed, never dropped); then arrival."""
    return (-req.priority, ttft_missed(req, now), req.arrival_s)


def decoding(running: Sequence[Request]) -> list[Request]:
    return [r for r in running if r.num_computed_tokens > 0 and r.num_pending_tokens <= 1]


def offline_key(req: Request) -> tuple[float, float]:
    """Offline work: earliest deadline first, then earlier arrival."""
    return (req.deadline_s, req.arrival_s)


def tightest_tpot_s(requests: Sequence[Request], default_tpot_ms: float | None) -> float | None:
    targets = [r.params.tpot_ms or default_tpot_ms for r in requests if not r.offline]
    targets = [t for t in targets if t]
    return min(targets) / 1000.0 if targets else None


class TokenBudgetPolicy(ABC):
    """How many tokens a step may compute."""

    @abstractmethod
    def budget(self, running: Sequence[Request]) -> int:
        """Token budget of the next step given the running requests."""

    def steady_budget(self, decoders: Sequence[Request]) -> int:
        """Tokens per step while `decoders` decode (for predictions); by default the next step's budget."""
        return self.budget(decoders)


class FixedBudget(TokenBudgetPolicy):
    def __init__(self, max_batch_tokens: int) -> None:
        self.max_batch_tokens = max_batch_tokens

    def budget(self, running: Sequence[Request]) -> int:
        return self.max_batch_tokens


class SloBudget(TokenBudgetPolicy):
    """Largest budget whose predicted step time fits the tightest TPOT target of the decoding requests.

    Every step is a gap between two tokens of each decoding request, so a step that fits the target keeps
    every gap within it: long prompts go in target-sized chunks beside the decodes (Sarathi-Serve's stall-free
    batches) instead of stalling them for a whole prefill. `tpot_budget_share` of the target is planned for,
    divided by the latency model's step margin (the error of recent mixed steps' predictions, high quantile):
    on a noisy machine chunks shrink until nearly every mixed step fits. Prefilling requests have no TPOT yet;
    their TTFT is the admission policy's business.
    """

    def __init__(self, latency: LatencyModel, config: ServingConfig) -> None:
        self.latency = latency
        self.config = config

    def _target_s(self, req: Request) -> float | None:
        if req.offline:  # no per-token target: offline decodes never tighten a step
            return None
        tpot_ms = req.params.tpot_ms or self.config.default_tpot_ms
        return tpot_ms * self.config.tpot_budget_share / 1000.0 if tpot_ms else None

    def step_limit_s(self, requests: Sequence[Request]) -> float | None:
        """Longest next step the requests' TPOT targets allow (None: no target constrains it)."""
        targets = [t for t in map(self._target_s, requests) if t is not None]
        return min(targets) if targets else None

    def budget(self, running: Sequence[Request]) -> int:
        decoders = decoding(running)
        return self._tokens_within(self.step_limit_s(decoders), decoders, running)

    def steady_budget(self, decoders: Sequence[Request]) -> int:
        return self._tokens_within(self.step_limit_s(decoders), decoders, decoders)

    def _tokens_within(self, limit_s: float | None, decoders: Sequence[Request], running: Sequence[Request]) -> int:
        cap = self.config.max_batch_tokens
        if limit_s is None:
            return cap
        decodes = [(1, r.num_tokens) for r in decoders]
        prefilling = [r for r in running if r.num_pending_tokens > 1]
        chunk_ctx = prefilling[0].num_computed_tokens if prefilling else 0
        limit_s /= self.latency.step_margin()
        room = self.latency.max_prefill_tokens(limit_s, decodes, chunk_ctx, max(cap - len(decodes), 0))
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
    ) -> float | None:
        """Return to admit (with the raw predicted TTFT in seconds, when one was made); raise `OverloadedError`
        to refuse. `inflight_left_s`: predicted rest of the step that is running now."""


class QueueBound(AdmissionPolicy):
    """FCFS admission: everything is accepted until the waiting queue is full."""

    def __init__(self, config: ServingConfig, latency: LatencyModel) -> None:
        self.config = config
        self.latency = latency

    def check(
        self, req: Request, running: Sequence[Request], waiting: Sequence[Request], inflight_left_s: float = 0.0
    ) -> float | None:
        if len(waiting) >= self.config.max_waiting_requests:
            step_s = self.latency.decode_step_s(max(len(running), 1), 256)
            raise OverloadedError("waiting queue is full", retry_after_ms=max(MIN_RETRY_MS, 1000 * step_s))
        return None


class SloAdmission(QueueBound):
    """Refuses a request whose predicted TTFT misses its target, or whose TPOT the decode batch cannot meet.
    With `slo_refuse` off it admits them all the same (bounded by the queue) and only predicts."""

    def __init__(self, config: ServingConfig, latency: LatencyModel, budget: TokenBudgetPolicy) -> None:
        super().__init__(config, latency)
        self.budget = budget

    def check(
        self, req: Request, running: Sequence[Request], waiting: Sequence[Request], inflight_left_s: float = 0.0
    ) -> float | None:
        super().check(req, running, waiting, inflight_left_s)
        raw_s = predict_ttft_s(self.latency, self.budget, req, running, waiting, inflight_left_s)
        if self.config.slo_refuse and not req.offline:  # offline work has no target to miss: it waits its turn
            self._refuse_misses(req, running, raw_s)
        return raw_s

    def _refuse_misses(self, req: Request, running: Sequence[Request], raw_s: float) -> None:
        decoders = decoding(running)
        tpot_s = tightest_tpot_s([*running, req], self.config.default_tpot_ms)
        if tpot_s is not None and decoders:
            # Judged at the profiled speed or the current one, whichever is faster: the correction follows bursts
            # of other work on the machine, and a refusal is a sure miss while a burst passes.
            shape = [(1, r.num_tokens) for r in decoders] + [(1, len(req.prompt_ids))]
            step_s = self.latency.step_s(shape) / max(self.latency.correction, 1.0)
            if step_s > tpot_s * self.config.admission_headroom:
                left = min(r.max_new_tokens - len(r.output_ids) for r in decoders)
                retry = 1000 * left * step_s
                raise OverloadedError(f"decode batch cannot meet tpot {1000 * tpot_s:.1f} ms", retry)
        # Judged by the most favourable error seen often enough: a refusal is a sure miss, so refuse only what is
        # late with confidence; the retry hint uses the expected TTFT.
        best_s = raw_s * self.latency.ttft_refusal_factor()
        limit_ms = None if req.params.ttft_ms is None else req.params.ttft_ms * self.config.admission_headroom
        if limit_ms is not None and best_s * 1000 > limit_ms:
            expected_s = raw_s * self.latency.ttft_correction
            raise OverloadedError(
                f"predicted ttft {1000 * best_s:.1f} ms exceeds {req.params.ttft_ms:.1f} ms",
                retry_after_ms=max(MIN_RETRY_MS, 1000 * expected_s - limit_ms),
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
    decoders = decoding(running)
    decodes = [(1, r.num_tokens) for r in decoders]
    # Offline work runs after online work within each step: it is ahead only of other offline requests.
    ahead = [r for r in running if r.num_pending_tokens > 1 and (req.offline or not r.offline)]
    ahead += [r for r in waiting if queue_key(r) <= queue_key(req) and (req.offline or not r.offline)]
    # Requests ahead decode while this one prefills: their targets bound the chunks it gets; decoders out of
    # slack bound them now (the next step's budget), and under load that is what the queue will see.
    tokens = min(budget.steady_budget([*decoders, *ahead]), budget.budget(running))
    chunk = max(tokens - len(decodes), 1)
    # The step in flight is already computing some of their tokens: only the rest is ahead of this request.
    prefills = [
        (r.num_pending_tokens - r.num_inflight_tokens, r.num_computed_tokens + r.num_inflight_tokens) for r in ahead
    ]
    prefills.append((req.num_pending_tokens, req.num_computed_tokens))
    total = latency.prefill_s(prefills, chunk, decodes)
    return total + inflight_left_s
