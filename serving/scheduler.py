"""The scheduler: which requests compute how many tokens in the next step, and what a step's results mean.

One-way loop (after vLLM v1): `schedule() -> SchedulerOutput`, the runner executes it, `update(output, sampled)`
advances requests. Per step, within the token budget: online running decodes first, then chunks of online partial
prefills, then new online requests; offline requests (rollouts: negative priority, no per-token target) take what is
left in the same order, earliest deadline first. An offline request left out of a step keeps its KV blocks (paused,
not recomputed); offline requests hold at most `offline_kv_share` of the cache. KV blocks are granted here; when
they run out, the lowest-priority running request is preempted (its blocks freed, its tokens recomputed later). With
prefix caching, a request starts from the longest run of its full blocks already cached (content-hashed, see
kv_cache). A request with n > 1 samples is prefilled once: at its first sample it forks into n requests that share
the prompt's blocks (the last, partly filled block is copied for each new sample before anyone writes into it). The
scheduler never touches the model or text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.config import ServingConfig
from serving.kv_cache import BlockAllocator, chain_hash
from serving.latency import LatencyModel
from serving.plan import SamplingSpec, ScheduledChunk, SchedulerOutput
from serving.policies import (
    FixedBudget,
    LowestPriorityLatest,
    QueueBound,
    SloAdmission,
    SloBudget,
    offline_key,
    predict_ttft_s,
    prefill_key,
    queue_key,
)
from serving.request import CHOICE_SEPARATOR, FinishReason, Request, RequestStatus


@dataclass
class StepUpdate:
    """What one step did to one request: tokens it gained, and its finish reason if it finished."""

    request: Request
    new_token_ids: list[int]
    finish_reason: FinishReason | None


class Scheduler:
    """Token-budget scheduler with priorities, chunked prefill, SLO admission and preemption by recompute."""

    def __init__(
        self,
        config: ServingConfig,
        allocator: BlockAllocator,
        block_size: int,
        latency: LatencyModel,
        max_context: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """`clock` gives the seconds that token times and the step in flight are measured in (tests pass a fake
        one to check admission against SLOs as logic, whatever the machine's speed)."""
        self.config = config
        self.clock = clock
        self.allocator = allocator
        self.block_size = block_size
        self.latency = latency
        self.max_context = max_context
        self.budget_policy = (
            SloBudget(latency, config) if config.slo_admission else FixedBudget(config.max_batch_tokens)
        )
        self.admission = (
            SloAdmission(config, latency, self.budget_policy) if config.slo_admission else QueueBound(config, latency)
        )
        self.preemption = LowestPriorityLatest()
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._released: list[str] = []
        self.num_preemptions = 0
        self._inflight_end_s: float | None = None
        self._copies: list[tuple[int, int]] = []  # copy-on-write of forked samples, done before the next step
        self.prefix_caching = config.prefix_caching
        self.num_prompt_tokens_prefilled = 0  # prompt tokens computed by the model (recomputes included)
        self.num_prompt_tokens_cached = 0  # prompt tokens taken from the prefix cache instead
        self.offline_block_cap = max(1, int(config.offline_kv_share * allocator.num_blocks))
        self.num_offline_paused = 0  # offline requests left out of the last step, holding their blocks

    # ----- admission and removal -----
    def add(self, req: Request) -> None:
        """Admit `req` or raise `OverloadedError` (admission policy)."""
        req.predicted_ttft_s = self.admission.check(req, self.running, self.waiting, self.inflight_left_s())
        if req.predicted_ttft_s is not None:
            req.expected_ttft_s = req.predicted_ttft_s * self.latency.ttft_correction
        self.requests[req.request_id] = req
        self.waiting.append(req)
        self.waiting.sort(key=queue_key)

    def finish(self, request_id: str, reason: FinishReason) -> Request | None:
        """Remove a request (cancel, stop string, error) and free its blocks at once."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        self._release_blocks(req)
        req.status, req.finish_reason = RequestStatus.FINISHED, reason
        self._released.append(request_id)
        return req

    def predicted_ttft_s(self, req: Request) -> float:
        return predict_ttft_s(self.latency, self.budget_policy, req, self.running, self.waiting, self.inflight_left_s())

    def inflight_left_s(self) -> float:
        """Predicted time left of the step planned last and not yet updated (0 when none runs)."""
        if self._inflight_end_s is None:
            return 0.0
        return max(0.0, self._inflight_end_s - self.clock())

    # ----- the step -----
    def schedule(self) -> SchedulerOutput:
        """Plan the next step: online decodes, partial prefills and waiting requests within the budget, then
        offline ones in the same order with what is left."""
        self.running.sort(key=queue_key)
        budget = self.budget_policy.budget(self.running)
        chunks: list[ScheduledChunk] = []
        budget = self._schedule_running([r for r in self.running if not r.offline], budget, chunks, online=True)
        budget = self._schedule_waiting(budget, chunks, offline=False)
        offline = sorted((r for r in self.running if r.offline), key=offline_key)
        budget = self._schedule_running(offline, budget, chunks, online=False)
        self.num_offline_paused = sum(r.status is RequestStatus.RUNNING for r in offline) - sum(
            self.requests[c.request_id].offline for c in chunks
        )
        self._schedule_waiting(budget, chunks, offline=True)
        released, self._released = self._released, []
        copies, self._copies = self._copies, []
        shape = [(len(c.token_ids), c.start_pos + len(c.token_ids)) for c in chunks]
        predicted = self.latency.step_s(shape) if chunks else 0.0
        self._inflight_end_s = self.clock() + predicted if chunks else None
        for c in chunks:
            self.requests[c.request_id].num_inflight_tokens = len(c.token_ids)
        return SchedulerOutput(chunks, released, predicted, copies)

    def _schedule_running(self, running: list[Request], budget: int, chunks: list[ScheduledChunk], online: bool) -> int:
        decodes = [r for r in running if r.num_pending_tokens == 1]
        prefills = [r for r in running if r.num_pending_tokens > 1]
        if online and self.config.slo_admission:
            self._order_by_deadline(prefills)
        for req in decodes:
            if req.status is RequestStatus.RUNNING and budget > 0 and self._grow(req, 1, chunks):
                chunks.append(self._chunk(req, 1))
                budget -= 1
        for req in prefills:
            if req.status is not RequestStatus.RUNNING:
                continue  # preempted above
            n = self._prefill_size(req, budget, chunks)
            if n and self._grow(req, n, chunks):
                chunks.append(self._chunk(req, n))
                budget -= n
        return budget

    def _order_by_deadline(self, prefills: list[Request]) -> None:
        """Prompts that can still meet their TTFT before those that cannot (see `prefill_key`), running and
        waiting alike."""
        now = self.clock()
        prefills.sort(key=lambda r: prefill_key(r, now))
        self.waiting.sort(key=lambda r: prefill_key(r, now))

    def _schedule_waiting(self, budget: int, chunks: list[ScheduledChunk], offline: bool) -> int:
        candidates = [r for r in self.waiting if r.offline == offline]
        if offline:
            candidates.sort(key=offline_key)
        for req in candidates:
            if budget <= 0 or len(self.running) >= self.config.max_running_requests:
                break
            cached = self._take_cached_prefix(req)
            n = self._prefill_size(req, budget, chunks)
            if not n or not self._allocate(req, n):
                self._release_blocks(req)
                req.num_computed_tokens = 0
                break
            self.num_prompt_tokens_cached += min(cached, len(req.prompt_ids))
            self.waiting.remove(req)
            req.status = RequestStatus.RUNNING
            if req.first_scheduled_s is None:
                req.first_scheduled_s = self.clock()
            self.running.append(req)
            chunks.append(self._chunk(req, n))
            budget -= n
        return budget

    def _prefill_size(self, req: Request, budget: int, chunks: list[ScheduledChunk]) -> int:
        """Tokens of `req`'s pending prefill to run now: a chunk, or all or nothing without chunking."""
        pending = req.num_pending_tokens
        has_prefill = any(len(c.token_ids) > 1 or c.start_pos == 0 for c in chunks)
        if not self.config.chunked_prefill:
            return pending if pending <= budget or not has_prefill else 0
        n = min(pending, budget)
        if n < pending and n < self.config.min_chunk_tokens and has_prefill:
            return 0  # a sliver of a prompt costs a step's overhead for little progress
        return n

    def _chunk(self, req: Request, n: int) -> ScheduledChunk:
        start = req.num_computed_tokens
        sample = start + n == req.num_tokens
        spec = self._spec(req, req.index)
        # Sample 0 draws the first token of every sample from its prompt's last row: the prompt runs once.
        fork = sample and req.index == 0 and req.params.n > 1 and not req.output_ids
        return ScheduledChunk(
            request_id=req.request_id,
            token_ids=req.tokens_between(start, start + n),
            start_pos=start,
            block_table=req.block_table,
            sample=sample,
            sampling=spec,
            forks=[(self._sample_id(req, i), self._spec(req, i)) for i in range(1, req.params.n)] if fork else [],
            history=(req.prompt_ids, req.output_ids) if spec.penalized else None,
        )

    @staticmethod
    def _spec(req: Request, index: int) -> SamplingSpec:
        p = req.params
        seed = None if p.seed is None else (p.seed + index) % 2**63
        return SamplingSpec(p.temperature, p.top_k, p.top_p, seed, p.presence_penalty, p.frequency_penalty,
                            p.repetition_penalty, p.logprobs)  # fmt: skip

    @staticmethod
    def _sample_id(req: Request, index: int) -> str:
        return f"{req.caller_id}{CHOICE_SEPARATOR}{index}"

    # ----- prefix cache -----
    def _hashes(self, req: Request, num_blocks: int) -> list[bytes]:
        """The chained content hashes of `req`'s first `num_blocks` full blocks (computed once, kept)."""
        bs, hashes = self.block_size, req.block_hashes
        while len(hashes) < num_blocks:
            j = len(hashes)
            hashes.append(chain_hash(hashes[-1] if hashes else b"", req.tokens_between(j * bs, (j + 1) * bs)))
        return hashes[:num_blocks]

    def _take_cached_prefix(self, req: Request) -> int:
        """Start a request that holds no blocks from its longest cached prefix; the tokens it skips.

        At least the last token is always computed: its logits give the next token.
        """
        if not self.prefix_caching or req.block_table or req.num_computed_tokens:
            return 0
        blocks = self.allocator.cached_prefix(self._hashes(req, (req.num_tokens - 1) // self.block_size))
        req.block_table, req.num_registered_blocks = blocks, len(blocks)
        req.num_computed_tokens = len(blocks) * self.block_size
        return req.num_computed_tokens

    def _register_full_blocks(self, req: Request) -> None:
        """Offer `req`'s newly completed blocks to the prefix cache."""
        full = req.num_computed_tokens // self.block_size
        if full <= req.num_registered_blocks:
            return
        for j, digest in enumerate(self._hashes(req, full)[req.num_registered_blocks :], req.num_registered_blocks):
            self.allocator.register(req.block_table[j], digest)
        req.num_registered_blocks = full

    # ----- KV blocks -----
    def _blocks_needed(self, req: Request, n: int) -> int:
        return math.ceil((req.num_computed_tokens + n) / self.block_size) - len(req.block_table)

    def offline_blocks(self) -> int:
        """KV blocks held by offline requests (running or paused); a block shared by several counts once."""
        return len({b for r in self.running if r.offline for b in r.block_table})

    def _allocate(self, req: Request, n: int) -> bool:
        need = self._blocks_needed(req, n)
        if need <= 0:
            return True
        if req.offline and self.offline_blocks() + need > self.offline_block_cap:
            return False
        blocks = self.allocator.allocate(need)
        if blocks is None:
            return False
        req.block_table.extend(blocks)
        return True

    def _grow(self, req: Request, n: int, chunks: list[ScheduledChunk]) -> bool:
        """Blocks for `n` more tokens of a running request, preempting lower ones if needed. An offline request
        at the offline cap takes blocks only from other offline requests (the latest deadline gives them back).

        A victim already planned in this step loses its chunk too: its blocks may be granted right away.
        """
        while not self._allocate(req, n):
            pool = [r for r in self.running if r.offline] if req.offline else self.running
            victim = max(pool, key=offline_key) if req.offline else self.preemption.victim(pool)
            if req.offline and victim is req:
                return False  # paused: it keeps its blocks until others finish or give theirs back
            chunks[:] = [c for c in chunks if c.request_id != victim.request_id]
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self._release_blocks(req)
        req.num_computed_tokens = req.num_inflight_tokens = 0
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.append(req)
        self.waiting.sort(key=queue_key)

    def _release_blocks(self, req: Request) -> None:
        if req.block_table:
            self.allocator.free(req.block_table)
            req.block_table = []
        req.num_registered_blocks = 0

    # ----- results -----
    def update(self, output: SchedulerOutput, sampled: dict[str, int]) -> list[StepUpdate]:
        """Advance every request of `output` by what ran; finished ones leave and free their blocks."""
        now = self.clock()
        self._inflight_end_s = None
        updates = []
        for chunk in output.chunks:
            req = self.requests.get(chunk.request_id)
            if req is None or req.status is not RequestStatus.RUNNING or req.block_table is not chunk.block_table:
                continue  # cancelled or preempted while the step ran
            prompt_part = min(chunk.start_pos + len(chunk.token_ids), len(req.prompt_ids)) - chunk.start_pos
            self.num_prompt_tokens_prefilled += max(prompt_part, 0)
            req.num_computed_tokens += len(chunk.token_ids)
            req.num_inflight_tokens = 0
            if self.prefix_caching:
                self._register_full_blocks(req)
            if not chunk.sample:
                continue
            for rid, _ in chunk.forks:
                updates.append(self._fork(req, rid, sampled[rid], now))
            token = sampled[chunk.request_id]
            req.output_ids.append(token)
            if req.first_token_s is None:
                req.first_token_s = now
                # Learn only from requests with a TTFT target: the workload admission actually judges.
                if req.predicted_ttft_s is not None and req.params.ttft_ms and not req.num_preemptions:
                    self.latency.observe_ttft(req.predicted_ttft_s, now - req.arrival_s)
            req.last_token_s = now
            reason = self._finish_reason(req, token)
            if reason is not None:
                self.finish(req.request_id, reason)
            updates.append(StepUpdate(req, [token], reason))
        return updates

    def _fork(self, parent: Request, request_id: str, token: int, now: float) -> StepUpdate:
        """A new sample of `parent`, whose first token was just drawn from the prompt's last row. It shares the
        prompt's full blocks and gets its own copy of the partly filled one; without a free block for that copy,
        it waits and recomputes its prompt like a preempted request."""
        index = int(request_id.rsplit(CHOICE_SEPARATOR, 1)[1])
        child = Request(request_id, parent.prompt_ids, parent.max_new_tokens, parent.params, parent.arrival_s,
                        parent.eos_token_ids, index=index, parent_id=parent.caller_id)  # fmt: skip
        child.first_scheduled_s, child.first_token_s, child.last_token_s = parent.first_scheduled_s, now, now
        full, partial = divmod(len(parent.prompt_ids), self.block_size)
        child.block_hashes = parent.block_hashes[:full]  # the prompt's full blocks: the same tokens
        child.output_ids.append(token)
        self.requests[request_id] = child
        copy = self.allocator.allocate(1) if partial else []
        if copy is None:
            self.waiting.append(child)
            self.waiting.sort(key=queue_key)
        else:
            shared = parent.block_table[:full]
            self.allocator.share(shared)
            child.block_table = shared + copy
            if copy:
                self._copies.append((parent.block_table[full], copy[0]))
            child.num_computed_tokens = len(parent.prompt_ids)
            child.num_registered_blocks = min(parent.num_registered_blocks, full)
            child.status = RequestStatus.RUNNING
            self.running.append(child)
        reason = self._finish_reason(child, token)
        if reason is not None:
            self.finish(request_id, reason)
        return StepUpdate(child, [token], reason)

    def _finish_reason(self, req: Request, token: int) -> FinishReason | None:
        if token in req.eos_token_ids:
            return "stop"
        if len(req.output_ids) >= req.max_new_tokens or req.num_tokens >= self.max_context:
            return "length"
        return None

    # ----- introspection -----
    def free_kv_tokens(self) -> int:
        return self.allocator.num_free * self.block_size
