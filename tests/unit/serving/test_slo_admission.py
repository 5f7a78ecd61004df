"""SLO admission under overload, as logic: a fake clock that each step advances by the latency model's own
prediction (a machine that runs exactly as profiled), so what is checked is admission's arithmetic, not this
machine's speed. The engine part checks that a submit never waits for a step in flight."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from serving.engine import Engine
from serving.errors import OverloadedError
from serving.kv_cache import BlockAllocator
from serving.latency import LatencyModel
from serving.request import GenerateParams, Request
from serving.scheduler import Scheduler
from tests.unit.serving.helpers import Collector, tiny_config

PROMPT = [(3 * j) % 250 for j in range(100)]
# 4 ms per step, 50 us per token, 0.1 ms per request, 0.5 us per token x context: a small CPU model's shape.
COEFFICIENTS = [4e-3, 5e-2, 1e-2, 5e-1]
BLOCK = 16
MAX_CONTEXT = 512


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _scheduler(clock: FakeClock, **overrides: object) -> Scheduler:
    config = tiny_config(Path("."), max_new_tokens_limit=64, **overrides)
    return Scheduler(config, BlockAllocator(4096), BLOCK, LatencyModel(list(COEFFICIENTS)), MAX_CONTEXT, clock=clock)


def _request(i: int, arrival_s: float, ttft_ms: float, tpot_ms: float) -> Request:
    params = GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=32, ttft_ms=ttft_ms, tpot_ms=tpot_ms)
    return Request(f"r{i}", list(PROMPT), 32, params, arrival_s)


def _simulate(sched: Scheduler, clock: FakeClock, arrivals: list[Request]) -> tuple[list[Request], list[float]]:
    """Run steps until every admitted request is done; arrivals are submitted at their own time, also while a
    step is in flight. Returns the admitted requests and the refusals' retry_after_ms."""
    admitted, refused, pending = [], [], list(arrivals)

    def submit_until(t: float) -> None:
        while pending and pending[0].arrival_s <= t:
            req = pending.pop(0)
            clock.now = max(clock.now, req.arrival_s)
            try:
                sched.add(req)
                admitted.append(req)
            except OverloadedError as err:
                refused.append(err.retry_after_ms)

    for _ in range(100_000):  # bounded: the workload needs a few thousand steps at most
        submit_until(clock.now)
        out = sched.schedule()
        if out.is_empty:
            if not pending:
                break
            clock.now = pending[0].arrival_s
            continue
        step_end = clock.now + out.predicted_step_s  # the machine runs exactly as the latency model predicts
        submit_until(step_end)  # requests that arrive during the step see it in flight
        clock.now = step_end
        sched.update(out, {c.request_id: 7 for c in out.chunks if c.sample})
    assert not sched.requests and not pending, "the simulation ran out of steps"
    return admitted, refused


def _isolated_ms(clock: FakeClock) -> tuple[float, float]:
    sched = _scheduler(clock)
    (req,), _ = _simulate(sched, clock, [_request(0, clock.now, 1e6, 1e6)])
    return 1000 * (req.first_token_s - req.arrival_s), 1000 * (req.last_token_s - req.first_token_s) / 31


@pytest.mark.parametrize("spacing_ms", [0.0, 0.5])
def test_overload_is_refused_and_admitted_requests_meet_slo(spacing_ms: float) -> None:
    clock = FakeClock()
    ttft0, tpot0 = _isolated_ms(clock)
    ttft_slo, tpot_slo = 10 * ttft0, 10 * tpot0
    clock.now = 0.0
    sched = _scheduler(clock)
    burst = [_request(i, spacing_ms * i / 1000, ttft_slo, tpot_slo) for i in range(150)]
    admitted, refused = _simulate(sched, clock, burst)

    assert refused, "the burst should exceed what the node can serve within SLO"
    assert len(admitted) >= 3
    assert len(admitted) + len(refused) == 150
    assert all(r >= 1 for r in refused)
    assert all(len(r.output_ids) == 32 for r in admitted)
    ttft_ms = [1000 * (r.first_token_s - r.arrival_s) for r in admitted]
    tpot_ms = [1000 * (r.last_token_s - r.first_token_s) / 31 for r in admitted]
    met = [t <= ttft_slo and p <= tpot_slo for t, p in zip(ttft_ms, tpot_ms, strict=True)]
    assert sum(met) >= 0.9 * len(admitted), (sum(met), len(admitted), ttft_slo, max(ttft_ms), tpot_slo, max(tpot_ms))


def test_without_refusal_the_same_burst_is_all_admitted_and_misses() -> None:
    clock = FakeClock()
    ttft0, tpot0 = _isolated_ms(clock)
    clock.now = 0.0
    sched = _scheduler(clock, slo_refuse=False)
    admitted, refused = _simulate(sched, clock, [_request(i, 0.0, 10 * ttft0, 10 * tpot0) for i in range(150)])
    assert (len(admitted), refused) == (150, [])
    assert max(1000 * (r.first_token_s - r.arrival_s) for r in admitted) > 10 * ttft0


@pytest.mark.timeout(90)
def test_submit_does_not_wait_for_the_step_in_flight(tmp_path: Path) -> None:
    with Engine(tiny_config(tmp_path, max_new_tokens_limit=64)) as engine:
        entered, release = threading.Event(), threading.Event()
        execute = engine.runner.execute

        def blocking_execute(output):  # type: ignore[no-untyped-def]
            if output.chunks:
                entered.set()
                release.wait(60)
            return execute(output)

        engine.runner.execute = blocking_execute
        sink = Collector()
        engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=8, request_id="first"), sink)
        assert entered.wait(30), "the engine never started a step"
        outcomes: list[str] = []

        def burst() -> None:
            for i in range(20):
                params = GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=8, ttft_ms=0.01, request_id=f"b{i}")
                try:
                    engine.submit(params, sink)
                    outcomes.append("admitted")
                except OverloadedError:
                    outcomes.append("refused")

        submitter = threading.Thread(target=burst)
        submitter.start()
        submitter.join(30)
        finished_while_blocked = not submitter.is_alive()
        release.set()
        submitter.join(30)
        assert finished_while_blocked, "submit waited for the step in flight"
        assert len(outcomes) == 20
        admitted = [f"b{i}" for i, o in enumerate(outcomes) if o == "admitted"]
        sink.wait(["first", *admitted], 60)
        assert [sink.done[r].finish_reason for r in ["first", *admitted]] == ["length"] * (1 + len(admitted))


def test_a_prompt_past_its_ttft_target_waits_behind_those_that_can_still_meet_theirs() -> None:
    clock = FakeClock()
    sched = _scheduler(clock, slo_refuse=False)
    late = _request(0, 0.0, ttft_ms=10.0, tpot_ms=1e6)
    sched.add(late)
    clock.now = 0.05  # 50 ms later, nothing ran yet: `late` has missed its 10 ms target
    fresh = _request(1, clock.now, ttft_ms=1000.0, tpot_ms=1e6)
    sched.add(fresh)
    out = sched.schedule()
    assert out.chunks[0].request_id == "r1"  # the one that can still make it goes first
    assert "r0" in {c.request_id for c in out.chunks} or sched.waiting == [late]  # delayed, not dropped
    fcfs = _scheduler(FakeClock(), slo_admission=False)
    fcfs.add(_request(0, 0.0, ttft_ms=10.0, tpot_ms=1e6))
    fcfs.clock.now = 0.05
    fcfs.add(_request(1, 0.05, ttft_ms=1000.0, tpot_ms=1e6))
    assert fcfs.schedule().chunks[0].request_id == "r0"  # FCFS keeps arrival order
