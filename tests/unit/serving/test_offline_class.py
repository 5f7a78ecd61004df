"""Offline requests (rollouts) in the scheduler: online work first within a step, a cap on offline KV, paused
offline requests keep their blocks, earliest deadline first; and the slack the engine reports. Fake clock, a
fixed latency model: logic only, whatever this machine's speed."""

from __future__ import annotations

import math

from serving.config import ServingConfig
from serving.kv_cache import BlockAllocator
from serving.latency import LatencyModel
from serving.request import GenerateParams, Request, RequestStatus
from serving.scheduler import Scheduler
from serving.slack import measure_slack

# 1 ms per step, 0.1 ms per token, 0.05 ms per request, attention work 1 us per 1000 token-positions.
LATENCY = LatencyModel(coefficients=[1e-3, 1e-4 / 1e-3, 5e-5 / 1e-2, 1e-9 / 1e-6])
BLOCK = 16


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_scheduler(num_blocks: int = 64, **overrides: object) -> tuple[Scheduler, Clock]:
    config = ServingConfig(**{"max_batch_tokens": 256, "slo_refuse": False, **overrides})
    clock = Clock()
    return Scheduler(config, BlockAllocator(num_blocks), BLOCK, LATENCY, 4096, clock=clock), clock


def submit(
    sched: Scheduler, clock: Clock, rid: str, prompt: int, *, offline: bool = False, **params: object
) -> Request:
    defaults = {"priority": -1, "deadline_ms": 10_000.0} if offline else {"tpot_ms": 20.0, "ttft_ms": 5000.0}
    ids = [len(sched.requests) + 7] * prompt  # a prompt of its own: no prefix shared with other requests
    p = GenerateParams(prompt_token_ids=ids, max_new_tokens=32, request_id=rid, **{**defaults, **params})
    req = Request(rid, ids, 32, p, arrival_s=clock())
    sched.add(req)
    return req


def step(sched: Scheduler) -> list[str]:
    """Plan a step and complete it (every sampled chunk gets token 5); the request ids it computed."""
    out = sched.schedule()
    sched.update(out, {c.request_id: 5 for c in out.chunks if c.sample})
    return [c.request_id for c in out.chunks]


def test_online_prefill_chunks_come_before_offline_decodes() -> None:
    sched, clock = make_scheduler()
    rollout = submit(sched, clock, "r", 8, offline=True)
    step(sched)  # the rollout prefills its prompt and decodes from now on
    assert rollout.num_pending_tokens == 1
    submit(sched, clock, "online", 2000)
    out = sched.schedule()
    ids = [c.request_id for c in out.chunks]
    assert ids[0] == "online"  # before the offline decode, which gets only what the online chunk leaves
    online_chunk = len(out.chunks[0].token_ids)
    assert online_chunk >= sched.budget_policy.budget(sched.running) - 1


def test_a_paused_offline_request_keeps_its_blocks_and_resumes_without_recompute() -> None:
    sched, clock = make_scheduler(max_batch_tokens=64)
    rollout = submit(sched, clock, "r", 40, offline=True)
    step(sched)
    blocks = list(rollout.block_table)
    computed = rollout.num_computed_tokens
    submit(sched, clock, "online", 600)  # fills every step's budget for several steps
    assert step(sched) == ["online"]
    assert sched.num_offline_paused == 1
    assert rollout.status is RequestStatus.RUNNING and rollout.block_table == blocks
    assert rollout.num_computed_tokens == computed and rollout.num_preemptions == 0
    while "r" not in step(sched):
        pass
    assert rollout.num_preemptions == 0 and sched.num_preemptions == 0


def test_offline_requests_hold_at_most_their_share_of_the_cache() -> None:
    sched, clock = make_scheduler(num_blocks=20, offline_kv_share=0.5)
    for i in range(4):
        submit(sched, clock, f"r{i}", 60, offline=True)  # 4 blocks each
    for _ in range(6):
        step(sched)
        assert sched.offline_blocks() <= 10
    assert sum(r.status is RequestStatus.RUNNING for r in sched.running) == 2
    online = submit(sched, clock, "online", 100)  # finds its blocks without preempting a rollout
    while online.num_pending_tokens > 1:
        step(sched)
    assert sched.num_preemptions == 0


def test_offline_work_runs_earliest_deadline_first() -> None:
    sched, clock = make_scheduler(max_batch_tokens=40)
    submit(sched, clock, "late", 32, offline=True, deadline_ms=9000.0)
    submit(sched, clock, "soon", 32, offline=True, deadline_ms=1000.0)
    assert step(sched)[0] == "soon"


def test_an_offline_request_without_targets_never_tightens_the_step_budget() -> None:
    sched, clock = make_scheduler(default_tpot_ms=2.0)
    submit(sched, clock, "r", 8, offline=True)
    step(sched)
    assert sched.budget_policy.budget(sched.running) == 256


def test_slack_reports_idle_step_budget_left_and_late_rollouts() -> None:
    sched, clock = make_scheduler()
    idle = measure_slack(sched, None, clock())
    assert idle.online_idle and idle.left_s == math.inf and idle.offline_pending == 0
    submit(sched, clock, "d", 16)
    step(sched)  # decoding now, 20 ms target x 0.8 budget share
    out = sched.schedule()
    busy = measure_slack(sched, out, clock())
    assert not busy.online_idle
    assert math.isclose(busy.left_s, 0.8 * 0.020 - out.predicted_step_s)
    sched.update(out, {c.request_id: 5 for c in out.chunks if c.sample})
    rollout = submit(sched, clock, "r", 16, offline=True, deadline_ms=60_000.0)
    assert not measure_slack(sched, None, clock()).offline_late
    clock.now = rollout.deadline_s - 0.001  # nearly due with 32 tokens to go
    assert measure_slack(sched, None, clock()).offline_late


def test_an_online_arrival_marks_the_engine_busy_before_its_hook_and_a_refusal_undoes_it(tmp_path) -> None:
    """A co-runner told of an arrival already finds the engine busy (the arbiter cannot grant it again in between);
    offline requests tell it nothing; a refused request leaves the slack as it found it."""
    from serving.engine import Engine
    from serving.errors import OverloadedError
    from tests.unit.serving.helpers import Collector, tiny_config

    with Engine(tiny_config(tmp_path)) as engine:
        seen: list[bool] = []
        engine.on_online_arrival = lambda arrival_s: seen.append(engine.slack().online_idle)
        sink = Collector()
        engine.submit(GenerateParams(prompt_token_ids=[3] * 4, max_new_tokens=2, request_id="a"), sink)
        assert seen == [False]
        rollout = GenerateParams(prompt_token_ids=[4] * 4, max_new_tokens=2, request_id="r", priority=-1,
                                 deadline_ms=60_000.0)  # fmt: skip
        engine.submit(rollout, sink)
        assert seen == [False]  # offline: no yield asked
        sink.wait(["a", "r"], 60)
        admit = engine.scheduler.add

        def refuse(req: Request) -> None:
            raise OverloadedError("full", 10)

        engine.scheduler.add = refuse
        try:
            engine.submit(GenerateParams(prompt_token_ids=[5] * 4, max_new_tokens=2, request_id="b"), sink)
        except OverloadedError:
            pass
        engine.scheduler.add = admit
        assert seen == [False, False] and engine.slack().online_idle
