"""Feed a bench workload to one system and record what each request saw, from the client's side.

Systems: this project's `Engine` (live Poisson trace), transformers `generate()` one request at a time
(measured, then its queue replayed for any arrival rate: a one-at-a-time server's requests do not interact), and
transformers continuous batching (`generate_batch`, or its manager fed live). This module knows how to drive
each system; what the numbers mean is `bench_workload`'s and `bench`'s business.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from serving.bench_workload import BenchRequest, RequestRecord
from serving.engine import Engine
from serving.errors import OverloadedError
from serving.request import DoneEvent, EngineEvent, GenerateParams, TokenEvent

POLL_S = 0.002
GIVE_UP_POLL_S = 0.05  # while waiting for the next arrival: how often a run checks whether it has failed


class _TraceSink:
    """Records the client-side time of every token of every request."""

    def __init__(self, records: list[RequestRecord]) -> None:
        self.records = records
        self.done = 0
        self.finished: set[int] = set()
        self.lock = threading.Lock()

    def for_request(self, index: int):
        record = self.records[index]

        def sink(event: EngineEvent) -> None:
            now = time.perf_counter()
            if isinstance(event, TokenEvent) and event.token_ids:
                if record.ttft_s is None:
                    record.ttft_s = now - record.start_s
                record.token_times_s.extend([now] * len(event.token_ids))
                record.num_tokens += len(event.token_ids)
            elif isinstance(event, DoneEvent):
                predicted_ms = event.timings.get("predicted_ttft_ms")
                record.predicted_ttft_s = None if predicted_ms is None else predicted_ms / 1000
                with self.lock:
                    self.done += 1
                    self.finished.add(index)

        return sink


def ttft_misses(records: list[RequestRecord], sent: int, ttft_slo_s: float, now: float) -> int:
    """Requests among the first `sent` that have already missed their TTFT target whatever happens next:
    refused, first token late, or no first token yet past the target."""
    missed = 0
    for r in records[:sent]:
        if r.refused or (r.ttft_s if r.ttft_s is not None else now - r.start_s) > ttft_slo_s:
            missed += 1
    return missed


def run_engine_trace(
    engine: Engine,
    requests: list[BenchRequest],
    ttft_slo_s: float | None,
    tpot_slo_s: float | None,
    timeout_s: float,
    give_up_after: int | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send each request at its arrival time with its SLOs (None: no target); wait for all; returns records
    and wall time. `give_up_after`: stop sending and cancel what is in flight once this many requests have
    missed their TTFT target (`ttft_misses`): the run has failed by then, and the requests it did not finish
    count as misses: they are marked abandoned, sent or not."""
    records = [RequestRecord() for _ in requests]
    sink = _TraceSink(records)
    start = time.perf_counter()
    expected = 0

    def failed(sent: int) -> bool:
        if give_up_after is None or ttft_slo_s is None:
            return False
        return ttft_misses(records, sent, ttft_slo_s, time.perf_counter()) >= give_up_after

    for i, req in enumerate(requests):
        while (delay := start + req.arrival_s - time.perf_counter()) > 0 and not failed(i):
            time.sleep(min(delay, GIVE_UP_POLL_S))
        if failed(i):
            break
        records[i].start_s = time.perf_counter()
        params = GenerateParams(
            prompt_token_ids=req.prompt_ids,
            max_new_tokens=req.max_new_tokens,
            ttft_ms=None if ttft_slo_s is None else 1000 * ttft_slo_s,
            tpot_ms=None if tpot_slo_s is None else 1000 * tpot_slo_s,
            request_id=f"bench-{i}",
        )
        try:
            engine.submit(params, sink.for_request(i))
            expected += 1
        except OverloadedError:
            records[i].refused = True
    deadline = start + timeout_s
    sent = sum(r.start_s > 0 for r in records)
    while sink.done < expected and time.perf_counter() < deadline and not failed(sent):
        time.sleep(POLL_S)
    gave_up = failed(sent)
    for i in range(len(requests)):
        engine.cancel(f"bench-{i}", "bench deadline")
    with sink.lock:
        for i, record in enumerate(records):
            if gave_up and i not in sink.finished and not record.refused:
                record.abandoned = True
    ends = [r.token_times_s[-1] for r in records if r.token_times_s]
    return records, (max(ends) if ends else time.perf_counter()) - start


@dataclass
class ServiceTime:
    """One request served alone: time to first token and offsets of every token from its start."""

    ttft_s: float
    token_offsets_s: list[float]


class _TimingStreamer:
    """transformers streamer that timestamps each generated token (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.extend([time.perf_counter()] * value.numel())

    def end(self) -> None:
        pass


def measure_hf_generate(model, requests: list[BenchRequest], eos: list[int]) -> tuple[list[ServiceTime], float]:
    """Serve each request alone with `model.generate()` (greedy), back to back; returns service times, wall."""
    services = []
    start = time.perf_counter()
    for req in requests:
        streamer = _TimingStreamer()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                torch.tensor([req.prompt_ids]),
                max_new_tokens=req.max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
                streamer=streamer,
            )
        services.append(ServiceTime(streamer.times[0] - t0, [t - t0 for t in streamer.times]))
    return services, time.perf_counter() - start


def replay_sequential(services: list[ServiceTime], requests: list[BenchRequest]) -> list[RequestRecord]:
    """What a one-request-at-a-time server with these service times does under `requests`' arrivals (FCFS)."""
    records, free_at = [], 0.0
    for svc, req in zip(services, requests, strict=True):
        begin = max(req.arrival_s, free_at)
        times = [begin + off for off in svc.token_offsets_s]
        free_at = times[-1]
        records.append(
            RequestRecord(
                ttft_s=begin - req.arrival_s + svc.ttft_s,
                token_times_s=times,
                start_s=req.arrival_s,
                num_tokens=len(times),
            )
        )
    return records


def run_hf_continuous_batching(
    model, requests: list[BenchRequest], eos: list[int], timeout_s: float, max_batch_tokens: int, kv_tokens: int
) -> tuple[list[RequestRecord], float]:
    """Feed transformers' continuous-batching manager at the arrival times (all at once at saturation).

    Its KV cache gets what the workload needs, at most `kv_tokens` (our engine's budget), and the same
    `max_batch_tokens`; left to itself it sizes the cache from free memory, which on CPU takes most of the RAM.
    """
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    logging.getLogger("transformers").setLevel(logging.ERROR)
    gen_config = GenerationConfig(
        max_new_tokens=max(r.max_new_tokens for r in requests), do_sample=False, eos_token_id=eos, pad_token_id=eos[0]
    )
    hints = WorkloadHints(
        max_prompt_length=max(len(r.prompt_ids) for r in requests),
        max_generated_length=max(r.max_new_tokens for r in requests),
        num_requests=len(requests),
    )
    page = 256  # its default page size
    pages_needed = sum(-(-(len(r.prompt_ids) + r.max_new_tokens) // page) for r in requests)
    cb_config = ContinuousBatchingConfig(
        page_size=page, num_blocks=min(pages_needed, max(kv_tokens // page, 1)) + 1, max_batch_tokens=max_batch_tokens
    )
    records = [RequestRecord() for _ in requests]
    with model.continuous_batching_context_manager(
        generation_config=gen_config,
        block=True,
        timeout=5,
        workload_hints=hints,
        continuous_batching_config=cb_config,
    ) as manager:
        start = time.perf_counter()
        for i, req in enumerate(requests):
            delay = start + req.arrival_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            records[i].start_s = time.perf_counter()
            manager.add_request(
                req.prompt_ids, request_id=f"cb-{i}", max_new_tokens=req.max_new_tokens, record_timestamps=True
            )
        _collect_cb(manager, records, start + timeout_s)
    ends = [r.token_times_s[-1] for r in records if r.token_times_s]
    return records, (max(ends) if ends else time.perf_counter()) - start


def _collect_cb(manager, records: list[RequestRecord], deadline: float) -> None:
    pending = len(records)
    while pending and time.perf_counter() < deadline:
        result = manager.get_result(timeout=0.1)
        if result is None or not result.is_finished():
            continue
        record = records[int(result.request_id.split("-")[1])]
        record.token_times_s = list(result.timestamps or [])
        record.num_tokens = len(result.generated_tokens)
        if record.token_times_s:
            record.ttft_s = record.token_times_s[0] - record.start_s
        pending -= 1
