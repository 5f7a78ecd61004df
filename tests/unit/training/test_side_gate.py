"""The work a training peer does between inner steps (outgoing delta, outer step, shared state, checkpoint, each
eval batch) runs only through its `side_gate` when one is set, and trains exactly as without one. Counts and
values only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.training.test_resume import corpus, tiny
from training.trainer import TrainingPeer


class Refused(Exception):
    """The gate never grants: the node stopped while the piece waited."""


class RecordingGate:
    """Runs each piece at once, remembering that it is inside one; `refuse` raises instead of running."""

    def __init__(self, refuse: bool = False) -> None:
        self.inside = False
        self.pieces = 0
        self.refuse = refuse

    def __call__(self, piece: Callable[[], None]) -> None:
        if self.refuse:
            raise Refused
        self.inside = True
        try:
            piece()
        finally:
            self.inside = False
            self.pieces += 1


def _observe(peer: TrainingPeer, gate: RecordingGate) -> list[tuple[str, bool]]:
    """Each call of the work between inner steps, with whether it ran inside a granted piece."""
    calls: list[tuple[str, bool]] = []

    def watched(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, gate.inside))
            return fn(*args, **kwargs)

        return call

    peer.outer.outgoing = watched("outgoing", peer.outer.outgoing)
    peer.outer.incoming = watched("outer step", peer.outer.incoming)
    peer.share_state = watched("share state", peer.share_state)
    peer.checkpoint = watched("checkpoint", peer.checkpoint)
    peer.inner.evaluate = watched("eval batch", peer.inner.evaluate)
    return calls


def test_the_work_between_inner_steps_runs_only_in_granted_pieces_and_trains_the_same(tmp_path: Path) -> None:
    data = corpus()
    plain = TrainingPeer(tiny(tmp_path / "plain"), data, peer_id="p", shard_index=0, num_shards=1)
    plain.run(7, eval_every=3)
    gated = TrainingPeer(tiny(tmp_path / "gated"), data, peer_id="p", shard_index=0, num_shards=1)
    gate = RecordingGate()
    gated.side_gate = gate
    calls = _observe(gated, gate)
    gated.run(7, eval_every=3)  # two rounds: outer steps, shared state, checkpoints and evaluations after 3 and 6
    assert {name for name, _ in calls} == {"outgoing", "outer step", "share state", "checkpoint", "eval batch"}
    assert all(inside for _, inside in calls)
    eval_batches = len(gated.eval_set)
    # per round: outgoing delta, digest of the outer state, outer step, shared state, checkpoint, each eval batch
    assert gate.pieces == 2 * (5 + eval_batches)
    assert [s for s, _ in gated.status.eval_history] == [s for s, _ in plain.status.eval_history] == [3, 6]
    for (_, a), (_, b) in zip(gated.status.eval_history, plain.status.eval_history, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    for a, b in zip(plain.outer.state_tensors(), gated.outer.state_tensors(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(plain.inner.params, gated.inner.params, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    written = [sorted(p.name for p in (tmp_path / kind).iterdir()) for kind in ("gated", "plain")]
    assert written[0] == written[1] and written[0]  # the same checkpoints


def test_without_a_grant_no_outer_step_checkpoint_or_evaluation_happens(tmp_path: Path) -> None:
    peer = TrainingPeer(tiny(tmp_path), corpus(), peer_id="p", shard_index=0, num_shards=1)
    before = [t.clone() for t in peer.outer.state_tensors()]
    peer.side_gate = RecordingGate(refuse=True)
    with pytest.raises(Refused):
        peer.run(3, eval_every=3)  # the round ends at step 3: its outer step waits for a grant that never comes
    assert peer.status.step == 3
    assert all(torch.equal(a, b) for a, b in zip(before, peer.outer.state_tensors(), strict=True))
    assert not any(tmp_path.iterdir()) and not peer.status.eval_history


def test_evaluating_the_global_weights_restores_the_live_ones_through_the_gate() -> None:
    peer = TrainingPeer(tiny(None), corpus(), peer_id="p", shard_index=0, num_shards=1)
    peer.run(2)  # mid-round: the live weights differ from the outer ones
    live = [p.detach().clone() for p in peer.inner.params]
    expected = peer.evaluate_global()
    gate = RecordingGate()
    peer.side_gate = gate
    assert peer.evaluate_global() == pytest.approx(expected, abs=1e-6)
    assert gate.pieces == 2 + len(peer.eval_set)  # to the outer weights, each eval batch, back
    assert all(torch.equal(a, b) for a, b in zip(live, peer.inner.params, strict=True))
