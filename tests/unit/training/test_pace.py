"""A straggler ends its round at the group's deadline and averages what it has, weighted by the steps it did: the
round clock alone (an injected clock), then two real trainers whose group combines parts with the reducers'
weighted mean (`comms.robust_average.combine_parts`), one of them three times slower on its own clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from comms.averaging import AveragingResult
from comms.robust_average import PartPolicy, combine_parts
from training.config import TrainingConfig
from training.data import TokenData
from training.inner import lr_factor
from training.pace import DEADLINE_SLACK, RoundDeadline
from training.trainer import TrainingPeer

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_deadline_before_the_group_s_pace_is_known() -> None:
    clock = Clock()
    d = RoundDeadline(4, clock)
    assert d.pace_s() is None and not d.overdue(1)
    d.start_round()
    clock.now += 50.0
    d.step_done()
    assert d.deadline() is None and not d.overdue(1)
    assert d.pace_s() == pytest.approx(50.0)


def test_deadline_is_h_steps_at_the_lower_median_of_the_claimed_paces() -> None:
    clock = Clock()
    d = RoundDeadline(4, clock)
    d.learn({"a": 1.0, "b": 3.0, "c": float("nan"), "d": -2.0, "e": float("inf")})  # bad claims left out
    assert d.group_pace_s == pytest.approx(1.0)  # lower median of [1, 3]: a lie makes the partner stop earlier only
    d.start_round()
    clock.now += 4.0 * DEADLINE_SLACK - 0.5
    assert not d.overdue(1)
    clock.now += 0.5  # 4 steps at 1 s, with the slack: the deadline
    assert d.overdue(1) and d.overdue(3)
    assert not d.overdue(0) and not d.overdue(4)  # nothing done, or the round is whole: nothing to end early
    d.start_round()
    clock.now += 10.0
    d.exclude(10.0)  # an evaluation: no time of the round's
    clock.now += 2.0
    d.step_done()
    assert d.pace_s() == pytest.approx(2.0) and not d.overdue(1)
    d.learn({})  # a round without claims keeps the last pace
    assert d.group_pace_s == pytest.approx(1.0)
    d.learn({"a": 2.0, "b": 3.0, "c": 5.0})
    assert d.group_pace_s == pytest.approx(3.0)


class WeightedGroup:
    """Two trainers in one process: each `step` waits for both and returns the weighted mean their weights give
    (the reducers' own `combine_parts`), with the paces they claimed; what each sent is recorded."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=30)
        self.lock = threading.Lock()
        self.inputs: dict[str, tuple[torch.Tensor, float, float | None]] = {}
        self.rounds: list[dict[str, tuple[torch.Tensor, float, float | None]]] = []


class WeightedMember:
    def __init__(self, group: WeightedGroup, peer_id: str) -> None:
        self.group, self.peer_id = group, peer_id

    def step(self, tensors: list[torch.Tensor], *, round_index: int, weight: float = 1.0,
             pace_s: float | None = None, **_: Any) -> AveragingResult:  # fmt: skip
        g = self.group
        with g.lock:
            g.inputs[self.peer_id] = (tensors[0].clone(), weight, pace_s)
        g.barrier.wait()
        with g.lock:
            parts = {i: (t, w) for i, (t, w, _) in enumerate(g.inputs[p] for p in sorted(g.inputs))}
            mean = combine_parts(parts, tensors[0].shape, PartPolicy()).average
            paces = {p: pace for p, (_, _, pace) in g.inputs.items() if pace is not None}
            members = {p: (round_index, "") for p in g.inputs}
            if self.peer_id == "a":
                g.rounds.append(dict(g.inputs))
        g.barrier.wait()
        return AveragingResult([mean], 2, sorted(members), 0.0, members, paces)

    def share_state(self, metadata: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        pass


def slow_peer(peer_id: str, shard: int, member: WeightedMember, step_s: float) -> tuple[TrainingPeer, Clock]:
    cfg = TrainingConfig.model_validate(
        {"model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
         "inner_steps": 6, "batch_size": 2, "seq_len": 16, "warmup_steps": 2, "total_steps": 30, "codec": "fp32",
         "outer_lr": 1.0, "outer_momentum": 0.0}
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    data = TokenData(torch.randint(0, 256, (20_000,), generator=gen), 0.05, 16)
    clock = Clock()
    peer = TrainingPeer(cfg, data, peer_id=peer_id, shard_index=shard, num_shards=2, averager=member, clock=clock)
    step = peer.inner.step

    def timed_step(batch: torch.Tensor) -> float:  # each inner step takes `step_s` on this peer's clock
        clock.now += step_s
        return step(batch)

    peer.inner.step = timed_step  # type: ignore[method-assign]
    return peer, clock


def test_a_straggler_averages_the_steps_it_did_by_the_deadline_weighted_by_them() -> None:
    group = WeightedGroup()
    fast, _ = slow_peer("a", 0, WeightedMember(group, "a"), step_s=1.0)
    slow, _ = slow_peer("b", 1, WeightedMember(group, "b"), step_s=3.0)
    start = [s.clone() for s in slow.outer.slow]

    def run(peer: TrainingPeer) -> None:
        peer.run(12)  # two rounds of H=6

    threads = [threading.Thread(target=run, args=(p,)) for p in (fast, slow)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=50)
    assert not any(t.is_alive() for t in threads)
    first, second = group.rounds
    # round 1: no pace known yet, both did all 6 steps; they claimed 1 s and 3 s per step
    assert (first["a"][1], first["b"][1]) == (1.0, 1.0)
    assert (first["a"][2], first["b"][2]) == (pytest.approx(1.0), pytest.approx(3.0))
    # round 2: the group's pace is 1 s, so the deadline is 6 * 1.5 = 9 s after the round started: the slow peer's
    # third step ends there, and it sends its 3 of 6 steps with weight 1/2
    assert DEADLINE_SLACK == 1.5
    assert second["a"][1] == 1.0 and second["b"][1] == pytest.approx(3 / 6)
    assert slow.status.rounds_cut == 1 and fast.status.rounds_cut == 0
    # both end round 2 at step 12 with the same outer state: the weighted mean of their pseudo-gradients
    assert slow.status.step == fast.status.step == 12
    assert slow.status.round_index == fast.status.round_index == 2
    a, b = second["a"][0], second["b"][0]
    want = (a + b / 2) / (1 + 1 / 2)
    flat_slow = torch.cat([(s0 - s).reshape(-1) for s0, s in zip(start, slow.outer.slow, strict=True)])
    first_mean = (first["a"][0] + first["b"][0]) / 2  # outer lr 1, no momentum: phi moves by each average
    assert torch.allclose(flat_slow, (first_mean + want)[: flat_slow.numel()], atol=1e-5)
    for x, y in zip(fast.outer.slow, slow.outer.slow, strict=True):
        assert torch.equal(x, y)
    # the straggler's schedule continues from the group's step, not from the steps it did
    lrs = [g["lr"] for g in slow.inner.optimizer.param_groups]
    assert lrs[0] == pytest.approx(slow.cfg.inner_lr * lr_factor(12, slow.cfg))
