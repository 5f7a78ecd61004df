"""Tasks by reference, and receiving rollouts without trust: each forged kind is refused and counted by reason."""

from __future__ import annotations

import pytest

from protocols import encode
from protocols.rollouts import RolloutBatch, RolloutGroup, TaskRefRecord
from swarm.runtime.config import ConfigError, build_config
from training.rl_config import RLConfig
from training.rl_select import Candidate, Reputation, RLCounters, RolloutGate, select_external, verify_batch
from training.rl_tasks import EVAL_BASE, INDEX_SPACE, TaskSet, derive_slot, spec_digest

SWARM, ME, PEER, MODEL = "s", "me", "peer-a", "hash"
CFG = RLConfig(num_generations=4, max_new_tokens=8)


@pytest.fixture(scope="module")
def tasks() -> TaskSet:
    return TaskSet(CFG.tasks)


def encode_text(text: str) -> list[int]:
    return list(text.encode())


def test_digests_and_derivation_are_deterministic_and_bound_to_the_sender(tasks: TaskSet) -> None:
    a, b = CFG.tasks[0], CFG.tasks[0].model_copy(update={"seed": 1})
    assert spec_digest(a) == spec_digest(RLConfig().tasks[0]) != spec_digest(b)
    assert derive_slot(SWARM, PEER, 3, 0, 4) == derive_slot(SWARM, PEER, 3, 0, 4)
    picks = {derive_slot(SWARM, p, r, s, 4) for p in (PEER, ME) for r in range(5) for s in range(4)}
    assert len(picks) == 40 and all(0 <= i < INDEX_SPACE for _, i in picks)
    assert INDEX_SPACE < EVAL_BASE


def test_a_rounds_slots_cover_the_task_set_evenly() -> None:
    for r in range(20):
        positions = [derive_slot(SWARM, PEER, r, s, 4)[0] for s in range(8)]
        assert sorted(positions) == [0, 0, 1, 1, 2, 2, 3, 3]
        three = [derive_slot(SWARM, PEER, r, s, 4)[0] for s in range(3)]
        assert len(set(three)) == 3
    firsts = {derive_slot(SWARM, PEER, r, 0, 4)[0] for r in range(40)}
    assert firsts == {0, 1, 2, 3}  # the walk starts at a hashed task, not always the first


def test_regenerated_entries_score_their_own_answer(tasks: TaskSet) -> None:
    for slot in range(8):
        ref = tasks.derive(SWARM, PEER, 0, slot)
        assert tasks.score(ref, tasks.answer(ref)) == 1.0
        assert tasks.score(ref, tasks.answer(ref) + "7") == 0.0
        assert len(tasks.prompt(ref)) < 40  # compact: a byte-level model reads every byte
    ref = tasks.ref(0, 5)
    assert tasks.prompt(ref).endswith("=") and tasks.entry(ref)["question"] != tasks.prompt(ref)


def test_bad_rl_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"rl\.tasks"):
        build_config({"rl": {"tasks": [{"name": "no_such_dataset"}]}})
    with pytest.raises(ConfigError, match=r"rl\.num_generations"):
        build_config({"rl": {"num_generations": 1}})
    assert build_config({"node": {"roles": ["rl", "serve"]}}).rl.per_peer_cap == 2


def _group(tasks: TaskSet, sender: str, r: int, slot: int, right: list[bool]) -> RolloutGroup:
    ref = tasks.derive(SWARM, sender, r, slot)
    answer = tasks.answer(ref)
    comps = [(answer if ok else answer + "7").encode() for ok in right]
    return RolloutGroup(
        task=TaskRefRecord(ref.dataset, ref.config_digest, ref.index),
        slot=slot,
        prompt_format="compact-v1",
        completions=comps,
        advisory_rewards=[float(ok) for ok in right],
    )


def _batch(tasks: TaskSet, groups: list[RolloutGroup], sender: str = PEER, r: int = 0, **kw: object) -> RolloutBatch:
    fields = dict(peer_id=sender, round=r, policy_version=0, model_hash=MODEL, task_set_digest=tasks.digest)
    fields.update(kw)
    return RolloutBatch(groups=groups, **fields)


def _gate(tasks: TaskSet) -> tuple[RolloutGate, RLCounters]:
    counters = RLCounters()
    return RolloutGate(CFG, tasks, ME, MODEL, counters), counters


MIXED = [True, False, True, False]


def test_an_honest_batch_passes_and_its_groups_are_rescored(tasks: TaskSet) -> None:
    gate, counters = _gate(tasks)
    groups = [_group(tasks, PEER, 0, s, MIXED) for s in range(3)] + [_group(tasks, PEER, 0, 3, [True] * 4)]
    assert gate.admit(PEER, encode(_batch(tasks, groups)))
    (batch,) = gate.take(0, {PEER}, 0.0, lambda: False)
    cands = verify_batch(batch, tasks, SWARM, CFG, encode_text, counters, gate.reputation)
    assert [c.rewards for c in cands] == [[1.0, 0.0, 1.0, 0.0]] * 3
    assert (counters.groups_received, counters.groups_filtered, counters.groups_rejected) == (4, 1, 0)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("forged_origin", "forged_origin"), ("stale", "stale"), ("future", "future"), ("other_model", "other_model"),
     ("task_set", "unknown_task"), ("too_long", "too_long"), ("group_size", "group_size"), ("garbage", "malformed"),
     ("too_many", "oversized"), ("huge", "oversized")],
)  # fmt: skip
def test_gate_refuses_each_cheap_forgery(tasks: TaskSet, kind: str, reason: str) -> None:
    gate, counters = _gate(tasks)
    gate.set_round(5)
    good = [_group(tasks, PEER, 5, 0, MIXED)]
    data = {
        "forged_origin": lambda: encode(_batch(tasks, good, sender="someone-else", r=5)),
        "stale": lambda: encode(_batch(tasks, good, r=2)),
        "future": lambda: encode(_batch(tasks, good, r=7)),
        "other_model": lambda: encode(_batch(tasks, good, r=5, model_hash="other")),
        "task_set": lambda: encode(_batch(tasks, good, r=5, task_set_digest="x")),
        "too_long": lambda: encode(_batch(tasks, [RolloutGroup(good[0].task, 0, "compact-v1", [b"1" * 33] * 4,
                                                               [0.0] * 4)], r=5)),
        "group_size": lambda: encode(_batch(tasks, [RolloutGroup(good[0].task, 0, "compact-v1", [b"1"] * 3,
                                                                 [0.0] * 3)], r=5)),
        "garbage": lambda: b"\xc1\x00garbage",
        "too_many": lambda: encode(_batch(tasks, good * 17, r=5)),
        "huge": lambda: b"\x00" * (300 * 1024),
    }[kind]()  # fmt: skip
    assert not gate.admit(PEER, data)
    if reason in ("stale", "future"):  # timing, not a lie: counted apart, no rejection of the sender
        assert dict(counters.late) == {reason: 1} and counters.groups_rejected == 0
    else:
        assert dict(counters.rejected) == {reason: counters.groups_rejected}
        assert counters.rejected_from[PEER] == counters.groups_rejected >= 1
    assert gate.take(5, set(), 0.0, lambda: False) == []


def test_replayed_round_is_refused(tasks: TaskSet) -> None:
    gate, counters = _gate(tasks)
    data = encode(_batch(tasks, [_group(tasks, PEER, 0, 0, MIXED)]))
    assert gate.admit(PEER, data)
    assert not gate.admit(PEER, data)
    assert dict(counters.rejected) == {"replayed": 1}


def test_rescoring_rejects_lies_and_strikes_then_bans_the_liar(tasks: TaskSet) -> None:
    gate, counters = _gate(tasks)
    lies = [_group(tasks, PEER, 0, 0, MIXED)]
    lies[0].completions = [b"wrong"] * 4  # claimed right twice
    not_derived = _group(tasks, PEER, 0, 1, MIXED)
    not_derived.task.index = 7  # an item the sender chose
    unknown = _group(tasks, PEER, 0, 2, MIXED)
    unknown.task.config_digest = "0" * 32
    dup = _group(tasks, PEER, 0, 2, MIXED)
    dup.slot = 1
    batch = _batch(tasks, [*lies, not_derived, unknown, dup, _group(tasks, PEER, 0, 3, MIXED)] * 2)
    cands = verify_batch(batch, tasks, SWARM, CFG, encode_text, counters, gate.reputation)
    assert len(cands) == 1  # the honest group of slot 3, once: its second copy is a duplicate slot
    assert counters.rejected["reward_mismatch"] == 1 and counters.rejected["task_not_derived"] == 1
    assert counters.rejected["unknown_task"] == 2 and counters.rejected["duplicate_task"] == 5
    assert gate.reputation.banned(PEER, 0) and gate.reputation.banned(PEER, CFG.ban_rounds)
    assert not gate.reputation.banned(PEER, CFG.ban_rounds + 1)
    gate.set_round(1)
    assert not gate.admit(PEER, encode(_batch(tasks, [_group(tasks, PEER, 1, 0, MIXED)], r=1)))
    assert counters.rejected["banned"] == 1


def test_trusting_advisory_rewards_lets_a_lie_through(tasks: TaskSet) -> None:
    counters = RLCounters()
    group = _group(tasks, PEER, 0, 0, MIXED)
    group.completions = [b"wrong"] * 4
    trusting = CFG.model_copy(update={"trust_advisory": True})
    cands = verify_batch(_batch(tasks, [group]), tasks, SWARM, trusting, encode_text, counters, Reputation(0.25, 8, 20))
    assert [c.rewards for c in cands] == [[1.0, 0.0, 1.0, 0.0]]


def test_selection_is_seeded_and_caps_each_peer(tasks: TaskSet) -> None:
    cands = [Candidate(p, 0, s, tasks.derive(SWARM, p, 0, s), "compact-v1", ["1"] * 4, [1.0, 0.0, 0.0, 0.0])
             for p in ("a", "b", "c") for s in range(4)]  # fmt: skip
    picked = select_external(cands, 4, 2, seed=11)
    assert len(picked) == 4 and max(sum(c.peer_id == p for c in picked) for p in "abc") <= 2
    assert picked == select_external(list(reversed(cands)), 4, 2, seed=11)  # arrival order does not matter
    assert len(select_external(cands[:4], 4, 2, seed=1)) == 2  # one peer alone fills at most its cap


def test_selection_prefers_datasets_the_own_groups_gave_no_signal_on(tasks: TaskSet) -> None:
    cands = [Candidate(p, 0, s, tasks.derive(SWARM, p, 0, s), "compact-v1", ["1"] * 4, [1.0, 0.0, 0.0, 0.0])
             for p in ("a", "b", "c") for s in range(4)]  # fmt: skip
    names = {c.ref.dataset for c in cands}
    covered = frozenset(sorted(names)[:-1])  # all but one dataset had signal in the own groups
    for seed in range(5):
        picked = select_external(cands, 4, 2, seed=seed, covered=covered)
        uncovered = [c for c in cands if c.ref.dataset not in covered]
        assert len(picked) == 4 and sum(c.ref.dataset not in covered for c in picked) == min(len(uncovered), 4)
    assert len(select_external(cands, 4, 2, seed=3, covered=frozenset(names))) == 4  # all covered: a uniform draw
