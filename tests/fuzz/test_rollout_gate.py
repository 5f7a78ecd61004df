"""Hypothesis feeds the rollout gate (the gossip topic validator) arbitrary batches: it refuses or keeps, never raises,
and every refusal is counted."""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.rl_config import RLConfig
from training.rl_select import RLCounters, RolloutGate
from training.rl_tasks import TaskSet

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CFG = RLConfig()
TASKS = TaskSet(CFG.tasks)

groups = st.lists(
    st.fixed_dictionaries({
        "task": st.fixed_dictionaries({"dataset": st.sampled_from(["chain_sum", "x"]),
                                       "config_digest": st.sampled_from([TASKS.digests[1], "0" * 32]),
                                       "index": st.integers(-5, 2**21)}),
        "slot": st.integers(-1, 70),
        "prompt_format": st.sampled_from(["compact-v1", "question-v1", ""]),
        "completions": st.lists(st.binary(max_size=40), max_size=18),
        "advisory_rewards": st.lists(st.floats(-1, 2), max_size=18),
    }),
    max_size=20,
)  # fmt: skip


@FUZZ
@given(st.sampled_from(["p", "q"]), st.integers(-3, 10), st.sampled_from(["hash", "other"]), groups)
def test_gate_refuses_or_keeps_and_counts(origin: str, round_index: int, model_hash: str, body: list) -> None:
    counters = RLCounters()
    gate = RolloutGate(CFG, TASKS, "me", "hash", counters)
    gate.set_round(3)
    data = msgpack.packb({"type": "rollout_batch", "v": [1, 0], "peer_id": "p", "round": round_index,
                          "policy_version": 0, "model_hash": model_hash, "task_set_digest": TASKS.digest,
                          "groups": body}, use_bin_type=True)  # fmt: skip
    kept = gate.admit(origin, data)
    refused = counters.groups_rejected + sum(counters.late.values())
    assert kept == (refused == 0)
    if kept:
        assert [b.peer_id for b in gate.take(round_index, set(), 0.0, lambda: False)] == ["p"]
