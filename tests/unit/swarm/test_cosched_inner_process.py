"""A training peer whose inner steps run in a child process (`InnerStepProcess`, the CPU co-scheduling path) trains
exactly as one stepping in its own process: the same weights, AdamW state and schedule after its rounds, the same
eval losses computed by the child, and its checkpoint holds them. Counts and values only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from swarm.runtime.arbiter import Gate, TrainerStopped
from swarm.runtime.coschedule import InnerStepProcess, can_share
from tests.unit.training.test_resume import corpus, tiny  # the same tiny peer and corpus as the resume test
from training.checkpoint import load_latest
from training.trainer import TrainingPeer

pytestmark = pytest.mark.timeout(300)


def test_inner_steps_in_a_child_process_train_as_in_process(tmp_path: Path) -> None:
    data = corpus()
    here = TrainingPeer(tiny(None), data, peer_id="p", shard_index=0, num_shards=1)
    here.micro_batch, here.micro_gate = 1, lambda micro_step: micro_step()
    here.run(7, eval_every=3)  # two rounds (outer steps after 3 and 6) and one step into the third

    there = TrainingPeer(tiny(tmp_path), data, peer_id="p", shard_index=0, num_shards=1)
    assert can_share(there.inner)
    there.micro_batch = 1
    gate = Gate()
    child = InnerStepProcess(there, gate, max_threads=1, lowest_priority=False)
    child.start()
    try:
        gate.grant(1)
        there.inner_step, there.inner_eval = child.step, child.evaluate
        there.run(7, eval_every=3)
    finally:
        child.stop()
    # every micro-step and every eval batch went through the gate, in the child
    assert there.status.step == 7 and gate.micro_steps == 7 * 2 + 2 * len(there.eval_set)
    assert [s for s, _ in there.status.eval_history] == [3, 6]
    for (_, a), (_, b) in zip(here.status.eval_history, there.status.eval_history, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    for a, b in zip(here.inner.params, there.inner.params, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(here.outer.state_tensors(), there.outer.state_tensors(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for p, q in zip(here.inner.params, there.inner.params, strict=True):
        mine, theirs = here.inner.optimizer.state[p], there.inner.optimizer.state[q]
        assert float(mine["step"]) == float(theirs["step"]) == 7
        assert torch.allclose(mine["exp_avg"], theirs["exp_avg"], atol=1e-6)
        assert torch.allclose(mine["exp_avg_sq"], theirs["exp_avg_sq"], atol=1e-8)
    assert there.inner.steps_done == here.inner.steps_done == 7
    assert there.inner.optimizer.param_groups[0]["lr"] == pytest.approx(here.inner.optimizer.param_groups[0]["lr"])
    ckpt = load_latest(tmp_path)  # written by the peer after step 6, from the shared state
    assert ckpt is not None and ckpt.step == 6
    saved = ckpt.inner_optimizer["optimizer"]["state"]
    assert all(float(s["step"]) == 6 for s in saved.values())
    assert ckpt.inner_optimizer["scheduler"]["last_epoch"] == 6


def test_a_step_cut_by_the_gate_closing_raises_trainer_stopped() -> None:
    peer = TrainingPeer(tiny(None), corpus(), peer_id="p", shard_index=0, num_shards=1)
    peer.micro_batch = 1
    gate = Gate()
    child = InnerStepProcess(peer, gate, max_threads=1, lowest_priority=False)
    child.start()
    try:
        gate.close()  # never granted: the node stops while the step waits
        with pytest.raises(TrainerStopped):
            child.step(peer.next_batch())
    finally:
        child.stop()
    assert peer.inner.steps_done == 0
