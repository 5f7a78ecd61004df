"""The serving engine: loads a model, runs the schedule -> execute -> update step loop in a worker thread.

Callers (the node, the CLI, tests) `submit` requests with a sink that receives `TokenEvent`s and one final
`DoneEvent`; refusals are raised at once as `ProtocolError` (`BAD_REQUEST`) or `OverloadedError`. The engine
owns tokenization and stop strings; it knows nothing about peers, the network or the event loop that calls it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from protocols.errors import ErrorCode, ProtocolError
from protocols.messages import LOAD_PROBE_PROMPT_TOKENS
from serving.config import ServingConfig
from serving.detokenizer import IncrementalDetokenizer
from serving.errors import EngineError
from serving.kv_cache import BlockAllocator, num_blocks_for_budget
from serving.latency import LatencyModel
from serving.model import resolve_device
from serving.plan import SchedulerOutput
from serving.profiling import load_or_choose_dtype, load_or_profile
from serving.request import (
    CHOICE_SEPARATOR,
    Choice,
    DoneEvent,
    EngineEvent,
    FinishReason,
    GenerateParams,
    GenerateResult,
    Request,
    TokenEvent,
    TokenLogprob,
)
from serving.runner import ModelRunner, kv_layout_of, model_max_context
from serving.scheduler import Scheduler, StepUpdate
from serving.slack import Slack, measure_slack
from serving.stats import ServingStats

log = logging.getLogger(__name__)
Sink = Callable[[EngineEvent], None]
IDLE_WAIT_S = 0.05


@dataclass
class LoadStats:
    """How busy the engine is, as published in gossip."""

    running: int
    waiting: int
    predicted_ttft_ms: float
    decode_tok_s: float
    free_kv_tokens: int
    prefill_tok_s: float


@dataclass
class _Stream:
    """One caller's request: its sink, and per sample (choice) a detokenizer, the request and how it ended."""

    sink: Sink
    detoks: list[IncrementalDetokenizer]
    request: Request
    samples: dict[int, Request]
    reasons: dict[int, FinishReason]
    token_s: dict[int, float] = field(default_factory=dict)  # per sample, when its latest token came


def resolve_dtype(name: str) -> torch.dtype | None:
    """The named dtype; None for `auto`, which is measured on the device at start (see dtype_choice)."""
    return None if name == "auto" else getattr(torch, name)


class Engine:
    """One node's generation engine. `start()` before use, `stop()` at the end."""

    def __init__(self, config: ServingConfig | None = None) -> None:
        self.config = config or ServingConfig()
        self._lock = threading.Condition()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.scheduler: Scheduler | None = None
        self.latency: LatencyModel | None = None
        self.num_steps = 0
        self.busy_s = 0.0  # seconds spent computing steps (a bench's busy fraction = busy_s / wall)
        self.stats = ServingStats()
        # Set once, from the engine thread, when the step loop dies: why, in one line. ``on_failure`` (set by the
        # owner before ``start``) is then called with it from that thread and must not block.
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        self.weights_version = 0  # bumped by each swap_weights, applied between two steps
        self._pending_weights: tuple[int, dict[str, torch.Tensor]] | None = None
        self._weight_swap: Any = None
        self._swap_error: EngineError | None = None
        # Co-scheduling: the slack left by online serving (replaced whole, so read without the lock), a callback
        # told the arrival time of each online request (it must not block), and the share of this device other
        # work reserves (the announced load is inflated by it, so routers send online work elsewhere).
        self._slack = Slack()
        self.on_online_arrival: Callable[[float], None] | None = None
        self.reserved_share = 0.0

    # ----- lifecycle -----
    def start(self) -> None:
        """Load the model, profile (or load the cached) latency model, start the step loop thread."""
        from serving.model import load_model

        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.device = resolve_device(cfg.device)
        loaded = load_model(cfg.model, cfg.model_seed)
        self.dtype_choice = None
        self.dtype = resolve_dtype(cfg.dtype)
        if self.dtype is None:
            self.dtype_choice = load_or_choose_dtype(loaded.hf_model, cfg, loaded.model_hash, self.device)
            self.dtype = getattr(torch, self.dtype_choice.dtype)
        self.model_id, self.model_hash, self.tokenizer = loaded.model_id, loaded.model_hash, loaded.tokenizer
        hf_config = loaded.hf_model.config
        layout = kv_layout_of(hf_config, self.dtype)
        num_blocks = num_blocks_for_budget(layout, cfg.kv_cache_bytes, cfg.block_size_tokens)
        self.runner = ModelRunner(loaded, self.device, self.dtype, num_blocks, cfg.block_size_tokens)
        # On a GPU, steps run on the highest-priority stream: work co-scheduled on a low-priority one yields to them.
        self._stream = torch.cuda.Stream(self.device, priority=-1) if self.device.type == "cuda" else None
        self.max_context = min(model_max_context(hf_config), num_blocks * cfg.block_size_tokens)
        self.vocab_size = int(hf_config.vocab_size)
        self.eos_token_ids = _eos_ids(loaded)
        self.latency = load_or_profile(self.runner, cfg, self.model_hash, self.device, self.dtype)
        self.latency.slowdown = cfg.slowdown_factor
        allocator = BlockAllocator(num_blocks)
        self.scheduler = Scheduler(cfg, allocator, cfg.block_size_tokens, self.latency, self.max_context)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="serving-engine", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "engine stopped", timeout_s: float = 30.0) -> None:
        """Cancel every request in flight with `reason` and join the step loop thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._lock:
            events = [self._finish(rid, "cancelled", reason) for rid in list(self._streams)]
        self._deliver([e for e in events if e is not None])

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- requests -----
    def submit(self, params: GenerateParams, sink: Sink) -> None:
        """Validate and admit `params`; events go to `sink` from the engine thread (it must not block)."""
        if self.scheduler is None or self._stopping:
            raise EngineError(self.failure or "engine is not running")
        try:
            self._admit(params, sink)
        except ProtocolError as err:
            self.stats.refused(err.code.name)
            raise

    def _admit(self, params: GenerateParams, sink: Sink) -> None:
        params.validate(self.config.max_new_tokens_limit, self.config.max_n)
        prompt_ids = self._prompt_ids(params)
        max_new = min(params.max_new_tokens, self.max_context - len(prompt_ids))
        req = Request(
            request_id=params.request_id,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new,
            params=params,
            arrival_s=time.perf_counter(),
            eos_token_ids=frozenset() if params.ignore_eos else self.eos_token_ids,
        )
        detoks = [IncrementalDetokenizer(self.tokenizer, prompt_ids, params.stop) for _ in range(params.n)]
        stream = _Stream(sink, detoks, req, {0: req}, {})
        if not req.offline:  # busy before the engine can start on it, and a co-runner told to yield first
            self._slack = Slack(False, 0.0, self._slack.offline_pending, self._slack.offline_late, req.arrival_s)
            if self.on_online_arrival is not None:
                self.on_online_arrival(req.arrival_s)
        with self._lock:
            try:
                if params.request_id in self._streams:
                    raise ProtocolError(ErrorCode.BAD_REQUEST, "request id already in flight", field="request_id")
                self.scheduler.add(req)  # raises OverloadedError when admission refuses
            except Exception:
                self._slack = measure_slack(self.scheduler, None, time.perf_counter())  # not admitted after all
                raise
            self._streams[req.request_id] = stream
            self._lock.notify_all()

    def slack(self) -> Slack:
        """What online serving leaves free now (cheap, any thread): see `serving.slack`."""
        return self._slack

    def _prompt_ids(self, params: GenerateParams) -> list[int]:
        if params.prompt_token_ids is not None:
            ids, field = list(params.prompt_token_ids), "prompt_token_ids"
            if max(ids) >= self.vocab_size:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"token id >= vocab size {self.vocab_size}", field=field)
        else:
            ids, field = self.tokenizer(params.prompt)["input_ids"], "prompt"
            if not ids:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "prompt encodes to no tokens", field=field)
        if len(ids) >= self.max_context:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"{len(ids)} tokens; the context holds {self.max_context}", field=field
            )
        return ids

    def cancel(self, request_id: str, reason: str = "cancelled by caller") -> bool:
        """Cancel a request at any point; its KV blocks are freed at once. False if it is not in flight."""
        with self._lock:
            event = self._finish(request_id, "cancelled", reason)
        if event is None:
            return False
        self._deliver([event])
        return True

    def generate(self, params: GenerateParams, timeout_s: float | None = None) -> GenerateResult:
        """Submit and wait for the whole result (CLI, tests). Refusals raise like `submit`."""
        events: queue.Queue[EngineEvent] = queue.Queue()
        self.submit(params, events.put)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        ids: dict[int, list[int]] = {i: [] for i in range(params.n)}
        text: dict[int, list[str]] = {i: [] for i in range(params.n)}
        logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(params.n)}
        while True:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                event = events.get(timeout=wait)
            except queue.Empty:
                self.cancel(params.request_id, "generate timed out")
                deadline = None  # the cancel's DoneEvent (or the one that raced it) is queued by now
                continue
            if isinstance(event, TokenEvent):
                ids[event.index].extend(event.token_ids)
                text[event.index].append(event.text)
                logprobs[event.index].extend(event.logprobs or [])
                continue
            reasons = event.finish_reasons or [event.finish_reason]
            choices = [
                Choice(i, "".join(text[i]), ids[i], reasons[i] if i < len(reasons) else event.finish_reason,
                       logprobs[i] if params.logprobs is not None else None)
                for i in range(params.n)
            ]  # fmt: skip
            return GenerateResult(event.request_id, choices[0].text, choices[0].token_ids, event.finish_reason,
                                  event.usage, event.timings, event.error, choices)  # fmt: skip

    def load(self) -> LoadStats:
        """Current load, the TTFT a probe-length prompt would see, the decode rate of the current batch and the
        rate at which prompt tokens would be prefilled beside it."""
        if self.scheduler is None:
            raise EngineError("engine is not running")
        with self._lock:
            sched = self.scheduler
            probe_ids = [0] * LOAD_PROBE_PROMPT_TOKENS
            probe = Request("load-probe", probe_ids, 1, GenerateParams(prompt="x"), 0.0)
            ttft_s = sched.predicted_ttft_s(probe)
            decoders = max(1, len(sched.running))
            ctx = sum(r.num_tokens for r in sched.running) // decoders if sched.running else LOAD_PROBE_PROMPT_TOKENS
            step_s = self.latency.decode_step_s(decoders, ctx)
            decodes = [(1, r.num_tokens) for r in sched.running]
            # The probe-length chunk: the rate a router scales by a request's prompt length to the probe's TTFT.
            room = max(sched.budget_policy.budget(sched.running) - len(decodes), self.config.min_chunk_tokens)
            chunk = min(room, LOAD_PROBE_PROMPT_TOKENS)
            prefill_step_s = self.latency.step_s([*decodes, (chunk, chunk)])
            keep = 1.0 - min(max(self.reserved_share, 0.0), 0.9)  # what serving keeps of this device
            return LoadStats(
                len(sched.running),
                len(sched.waiting),
                1000 * ttft_s / keep,
                keep * decoders / step_s,
                sched.free_kv_tokens(),
                keep * chunk / prefill_step_s,
            )

    def counters(self) -> dict[str, int]:
        """Running totals: prompt tokens the model computed, prompt tokens served from the prefix cache, steps,
        preemptions, and the KV blocks that hold a cached prefix now."""
        if self.scheduler is None:
            raise EngineError("engine is not running")
        with self._lock:
            sched = self.scheduler
            return {
                "prompt_tokens_prefilled": sched.num_prompt_tokens_prefilled,
                "prompt_tokens_cached": sched.num_prompt_tokens_cached,
                "steps": self.num_steps,
                "preemptions": sched.num_preemptions,
                "offline_paused": sched.num_offline_paused,
                "cached_blocks": sched.allocator.num_cached,
                "kv_blocks": sched.allocator.num_blocks,
                "kv_blocks_free": sched.allocator.num_free,
            }

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (a benchmark run that must not profit from an earlier one calls this)."""
        if self.scheduler is None:
            raise EngineError("engine is not running")
        with self._lock:
            self.scheduler.allocator.forget_hashes()

    def swap_weights(self, version: int, deltas: dict[str, torch.Tensor], timeout_s: float = 30.0) -> None:
        """Serve base + `deltas` (keyed by HF linear weight names) from the next step boundary on, and wait for it.

        A request's tokens before and after the swap come from different weights: callers that learn from their
        requests compare `weights_version` before and after."""
        if self.scheduler is None:
            raise EngineError("engine is not running")
        with self._lock:
            self._pending_weights = (version, deltas)
            self._lock.notify_all()
            if not self._lock.wait_for(lambda: self._pending_weights is None or self._stopping, timeout_s):
                raise EngineError(f"weights not swapped within {timeout_s} s")
            error, self._swap_error = self._swap_error, None
        if error is not None:
            raise error

    def _apply_pending_weights(self) -> None:
        """Called by the step loop with the lock held, between two steps."""
        from serving.weight_swap import WeightSwap

        version, deltas = self._pending_weights
        if self._weight_swap is None:
            self._weight_swap = WeightSwap(self.runner)  # the base copy, taken before the first swap
        try:
            self._weight_swap.apply(deltas)
            self.weights_version = version
        except EngineError as err:  # a bad delta fails the caller's swap, not the engine
            self._swap_error = err
        finally:
            self._pending_weights = None
            self._lock.notify_all()

    # ----- the step loop -----
    def _loop(self) -> None:
        try:
            self._run_steps()
        except Exception as err:  # outside a step's own guard: the loop cannot go on
            self._die(err)

    def _die(self, err: Exception) -> None:
        """Fail every request in flight, refuse new ones, and tell the owner why the step loop ended."""
        reason = f"engine thread died: {type(err).__name__}: {' '.join(str(err).split())}"
        if self.on_failure is None:  # an owner that listens reports it in its own words: one error line, not two
            log.error("%s", reason)
        log.debug("engine failure", exc_info=err)
        with self._lock:
            self.failure = reason
            self._stopping = True
            # The scheduler may be what broke: end the streams without asking it.
            events = []
            for st in self._streams.values():
                for i in range(st.request.params.n):
                    st.reasons.setdefault(i, "error")
                events.append((st.sink, self._done_event(st, reason, "error")))
            self._streams.clear()
        self._deliver(events)
        if self.on_failure is not None:
            try:
                self.on_failure(reason)
            except Exception:
                log.exception("engine failure callback failed")

    def _run_steps(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                if self._pending_weights is not None:
                    self._apply_pending_weights()
                output = self.scheduler.schedule()
                self._slack = measure_slack(self.scheduler, output, time.perf_counter())
                if output.is_empty:
                    self.runner.execute(output)  # drops released requests' sampler state
                    self._lock.wait(IDLE_WAIT_S)
                    continue
            self._step(output)

    def _step(self, output: SchedulerOutput) -> None:
        start = time.perf_counter()
        try:
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    sampled = self.runner.execute(output)
            else:
                sampled = self.runner.execute(output)
        except Exception as err:  # a failing step fails its requests, not the engine
            log.exception("engine step failed")
            with self._lock:
                callers = {c.request_id.split(CHOICE_SEPARATOR)[0] for c in output.chunks}
                events = [self._finish(rid, "error", f"step failed: {err}") for rid in callers]
            self._deliver([e for e in events if e is not None])
            return
        elapsed = time.perf_counter() - start
        self.num_steps += 1
        self.busy_s += elapsed
        shape = [(len(c.token_ids), c.start_pos + len(c.token_ids)) for c in output.chunks]
        factor = self.config.slowdown_factor
        if factor > 1.0:
            # A machine `factor`x slower than this one's profile, and all its own: the step lasts factor x the
            # profiled time whatever else runs here (CPU contention would otherwise be stretched too).
            stretched = max(elapsed, factor * self.latency.profiled_step_s(shape))
            time.sleep(stretched - elapsed)
            elapsed = stretched / factor  # predictions multiply by the slowdown: learn from the step's share
        self.latency.observe(shape, elapsed)
        logprobs = self.runner.last_logprobs
        with self._lock:
            updates = self.scheduler.update(output, sampled)
            events = self._events(updates, logprobs)
        self._deliver(events)

    def _events(self, updates: list[StepUpdate], logprobs: dict[str, TokenLogprob]) -> list[tuple[Sink, EngineEvent]]:
        """Token and done events for one step's updates (called with the lock held)."""
        out: list[tuple[Sink, EngineEvent]] = []
        for up in updates:
            req = up.request
            rid = req.caller_id
            stream = self._streams.get(rid)
            if stream is None:
                continue
            stream.samples[req.index] = req
            self._record_tokens(stream, req, len(up.new_token_ids))
            detok = stream.detoks[req.index]
            text = detok.add(up.new_token_ids)
            reason: FinishReason | None = up.finish_reason
            if reason is None and detok.stopped:
                reason = "stop"
                self.scheduler.finish(req.request_id, "stop")
            if reason is not None:
                text += detok.finish()
                stream.reasons[req.index] = reason
            lps = [logprobs[req.request_id]] if req.request_id in logprobs else None
            out.append((stream.sink, TokenEvent(rid, up.new_token_ids, text, req.index, lps)))
            if len(stream.reasons) == req.params.n:
                del self._streams[rid]
                out.append((stream.sink, self._done_event(stream, None)))
        return out

    def _record_tokens(self, stream: _Stream, req: Request, count: int) -> None:
        now = req.last_token_s or time.perf_counter()
        previous = stream.token_s.get(req.index)
        stream.token_s[req.index] = now
        if previous is None and req.index == 0 and req.first_token_s is not None:
            self.stats.first_token(req.first_token_s - req.arrival_s)
        self.stats.tokens(count, None if previous is None else now - previous)

    def _finish(self, request_id: str, reason: FinishReason, error: str | None) -> tuple[Sink, EngineEvent] | None:
        """End a caller's request, every sample of it, from outside the step (cancel, stop, failure); called with
        the lock held."""
        stream = self._streams.pop(request_id, None)
        if stream is None:
            return None
        self.scheduler.finish(request_id, reason)
        for i in range(1, stream.request.params.n):
            self.scheduler.finish(f"{request_id}{CHOICE_SEPARATOR}{i}", reason)
        for i in range(stream.request.params.n):
            stream.reasons.setdefault(i, reason)
        return stream.sink, self._done_event(stream, error, reason)

    def _done_event(self, stream: _Stream, error: str | None, reason: FinishReason | None = None) -> DoneEvent:
        """`reason`: why the whole request ended when that was decided outside the step (default: choice 0's)."""
        now = time.perf_counter()
        req = stream.request
        n = len(req.output_ids)
        timings = {
            "ttft_ms": 1000 * (req.first_token_s - req.arrival_s) if req.first_token_s else 0.0,
            "tpot_ms": 1000 * (req.last_token_s - req.first_token_s) / (n - 1) if n > 1 else 0.0,
            "e2e_ms": 1000 * (now - req.arrival_s),
            "queue_ms": 1000 * ((req.first_scheduled_s or now) - req.arrival_s),
        }
        if req.expected_ttft_s is not None:  # what SLO admission predicted (benches compare it to ttft_ms)
            timings["predicted_ttft_ms"] = 1000 * req.expected_ttft_s
        completion = sum(len(r.output_ids) for r in stream.samples.values())
        usage = {"prompt_tokens": len(req.prompt_ids), "completion_tokens": completion}
        reasons = [stream.reasons[i] for i in range(req.params.n)]
        tpot_s = timings["tpot_ms"] / 1000 if n > 1 else None
        self.stats.finished(reason or reasons[0], usage["prompt_tokens"], timings["e2e_ms"] / 1000, tpot_s)
        p = req.params
        if (p.ttft_ms or p.tpot_ms) and (reason or reasons[0]) in ("stop", "length"):
            ttft_ok = p.ttft_ms is None or timings["ttft_ms"] <= p.ttft_ms
            self.stats.slo_outcome(ttft_ok and (p.tpot_ms is None or n < 2 or timings["tpot_ms"] <= p.tpot_ms))
        return DoneEvent(req.request_id, reason or reasons[0], usage, timings, error, reasons)

    @staticmethod
    def _deliver(events: list[tuple[Sink, EngineEvent]]) -> None:
        for sink, event in events:
            try:
                sink(event)
            except Exception:  # a broken sink must not stop the engine
                log.exception("event sink failed for %s", event.request_id)


def _eos_ids(loaded: Any) -> frozenset[int]:
    ids: set[int] = set()
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(int(loaded.tokenizer.eos_token_id))
    gen_eos = getattr(loaded.hf_model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(int(i) for i in gen_eos)
    return frozenset(ids)
