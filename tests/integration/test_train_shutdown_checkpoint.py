"""A training node stopped with SIGTERM mid-round writes a checkpoint of the state it reached; a node started again
on the same directory resumes from that step (not from the start, nor from the last round boundary)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.nodes import wait_until
from training.checkpoint import load_latest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def train_args(ckpt: Path) -> tuple[str, ...]:
    return ("--roles", "train", "--heartbeat-s", "1", "--peer-timeout-s", "6",
            "--set", "training.inner_steps=100000", "--set", "training.total_steps=1000000",
            "--set", "training.max_corpus_bytes=100000", "--set", "training.eval_batches=1",
            "--set", f"training.checkpoint_dir={ckpt}")  # fmt: skip


def own_step(node) -> int:  # type: ignore[no-untyped-def]
    row = next(r for r in node.peers() if r["self"])
    return int(row["training"]["step"] or 0)


def test_sigterm_writes_a_checkpoint_and_restart_resumes_from_it(start_node, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    a = start_node("a", *train_args(ckpt))
    wait_until(lambda: own_step(a) >= 3, timeout_s=120, interval_s=0.5)
    assert load_latest(ckpt) is None  # no round boundary was reached: nothing was checkpointed yet
    a.signal(signal.SIGTERM)
    assert a.proc.wait(timeout=30) == 0, a.log_tail()
    saved = load_latest(ckpt)
    assert saved is not None and saved.step >= 3 and saved.round_index == 0, a.log_tail()
    assert "checkpoint of step" in a.log_tail(20_000)

    b = start_node("b", *train_args(ckpt))
    wait_until(lambda: own_step(b) >= saved.step, timeout_s=120, interval_s=0.5)
    assert f"resumed from {saved.path}" in b.log_tail(50_000), b.log_tail()
