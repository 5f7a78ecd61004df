"""The RL bench's report: seeds merged per arm, the ratios over the merged arms and each seed's pair."""

from __future__ import annotations

import pytest

from swarm.bench.rl_bench import merge_seeds, ratios


def _run(cum: float, curve: list[float], *, eval_acc: float | None, forged: int = 0, used: int = 0) -> dict:
    return {
        "local_groups": 4, "external_groups": 4, "rounds": len(curve), "seconds": 10.0,
        "cumulative_reward": cum, "reward_curve": curve, "final_eval_accuracy": eval_acc,
        "generated_tokens": 100, "rejected_groups_by_reason": {"banned": forged},
        "honest_false_rejects": 0, "forged_groups_received": forged, "forged_groups_used": used,
    }  # fmt: skip


def test_seeds_are_averaged_counts_summed_and_each_seed_kept() -> None:
    merged = merge_seeds([_run(1.0, [0.25, 0.75], eval_acc=0.5, forged=3),
                          _run(2.0, [0.75, 1.25], eval_acc=None, forged=5)])  # fmt: skip
    assert merged["cumulative_reward"] == 1.5 and merged["reward_curve"] == [0.5, 1.0]
    assert merged["final_eval_accuracy"] == 0.5  # the seed without an eval does not count as zero
    assert merged["forged_groups_received"] == 8 and merged["rejected_groups_by_reason"] == {"banned": 8}
    assert merged["rounds"] == 2 and merged["seeds"] == 2
    assert [r["cumulative_reward"] for r in merged["per_seed"]] == [1.0, 2.0]


def test_ratios_of_merged_arms_and_per_seed_pairs() -> None:
    local = merge_seeds([_run(2.0, [1.0, 1.0], eval_acc=0.2), _run(4.0, [2.0, 2.0], eval_acc=0.4)])
    shared = merge_seeds([_run(3.0, [1.5, 1.5], eval_acc=0.3, forged=6), _run(3.0, [1.5, 1.5], eval_acc=0.3, forged=2,
                                                                              used=1)])  # fmt: skip
    out = ratios({"8/0": local, "4/4+liar": shared})
    assert out["reward_gain_shared_vs_local"] == pytest.approx(1.0)
    assert out["reward_gain_per_seed"] == pytest.approx([1.5, 0.75])
    assert out["eval_gain_shared_vs_local"] == pytest.approx(1.0)
    assert out["forged_rejected_fraction"] == pytest.approx(1 - 1 / 8) and out["honest_false_rejects"] == 0
