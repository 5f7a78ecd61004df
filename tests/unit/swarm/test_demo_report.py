"""The demo's bookkeeping: eval losses read from `/metrics` land on the right round, and the summary's checks
decide the exit code from the figures (no nodes here: the demo's integration test runs them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from swarm.bench.demo_report import Summary
from swarm.bench.demo_serve import Answer, RlProgress, reward_curve
from swarm.bench.train_swarm import NodeProgress


def metrics(round_: int, step: int, eval_loss: float | None) -> str:
    lines = [f"swarm_train_round {round_}.0", f"swarm_train_step {step}.0", "swarm_train_loss 3.5"]
    if eval_loss is not None:
        lines.append(f"swarm_train_eval_loss {eval_loss}")
    return "\n".join(["# HELP swarm_train_round x", *lines, 'swarm_bytes_out_total{channel="gossip"} 7.0']) + "\n"


def test_eval_loss_is_recorded_for_the_round_read_with_a_new_value() -> None:
    p = NodeProgress()
    p.update("swarm_peers 3.0\n")  # no training role yet: nothing changes
    assert p.step == 0 and not p.eval_by_round
    p.update(metrics(0, 0, 5.5))
    p.update(metrics(0, 7, 5.5))
    p.update(metrics(1, 10, 5.5))  # the round moved on, its eval not taken yet: still the round before's value
    assert p.eval_by_round == {0: 5.5}
    p.update(metrics(1, 11, 4.25))
    p.update(metrics(2, 20, 3.0))
    assert p.eval_by_round == {0: 5.5, 1: 4.25, 2: 3.0}
    assert (p.round, p.step, p.loss, p.eval_loss) == (2, 20, 3.5, 3.0)


def summary(end_loss: float, reasons: tuple[str, str], codes: list[int | None]) -> Summary:
    s = Summary(num_nodes=3, plan={}, workdir="/tmp/x", converged_s=4.0)
    s.train({0: 5.0, 1: 4.8, 2: end_loss}, 30.0)
    s.serve([Answer("http", "import ", "os", reasons[0], 12.0, 20.0), Answer("client", "from ", "x", reasons[1],
                                                                                None, 9.0)], 2, "m")  # fmt: skip
    s.exit_codes = codes
    return s


def test_checks_need_a_tenth_off_the_eval_loss_stopped_answers_and_clean_exits() -> None:
    assert all(ok for _, ok in summary(4.4, ("stop", "stop"), [0, 0]).checks()[:3])
    failing = dict((text.split()[0], ok) for text, ok in summary(4.6, ("stop", "length"), [0, None]).checks())
    assert failing["eval"] is False and failing["every"] is False
    data = summary(4.4, ("stop", "stop"), [0]).as_json()
    assert data["eval_loss_start"] == 5.0 and data["eval_loss_end"] == 4.4 and data["train_rounds"] == 2
    assert data["ttft_ms"] == {"http": 12.0, "client": None}
    assert data["served_requests"] == 2 and math.isclose(data["converged_s"], 4.0)


def test_rl_figures_come_from_each_nodes_last_round_line(tmp_path: Path) -> None:
    logs = []
    for k, rewards in enumerate(((0.0, 0.5), (0.25, 0.75))):
        path = tmp_path / f"rl-{k}.jsonl"
        path.write_text("".join(json.dumps({"round": r, "mean_reward": v, "groups_received": 2 * (r + 1),
                                            "groups_used": r}) + "\n" for r, v in enumerate(rewards)))  # fmt: skip
        logs.append(RlProgress(path))
        logs[-1].poll()
    assert reward_curve(logs) == {0: 0.125, 1: 0.625}
    s = Summary(num_nodes=2, plan={}, workdir="/tmp/x")
    s.rl(logs)
    assert (s.rl_rounds, s.rl_groups_shared, s.rl_groups_used) == (2, 8, 2)
