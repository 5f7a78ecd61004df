"""Claims from peers checked against the group: the group's round is the lower median of its members' claims; a
state is taken only from donors making the majority's claim, and refused when its digest is not the claimed one."""

from __future__ import annotations

import threading

import pytest
import torch

from training.consensus import StateClaim, group_round, majority_donors, state_claim, state_digest
from training.trainer import TrainingPeer

from .test_consensus import LocalGroup, run_round, states_equal, tiny_peer

pytestmark = pytest.mark.timeout(60)
D1, D2 = "1" * 32, "2" * 32


def test_group_round_is_the_lower_median_of_claims() -> None:
    assert group_round("me", 5, {"me": (5, ""), "a": (5, ""), "liar": (10**9, "")}) == 5
    assert group_round("me", 5, {"liar": (10**9, "")}) == 5  # of two, the lower: one claim moves nobody
    assert group_round("me", 3, {"a": (5, ""), "b": (5, "")}) == 5  # a real majority ahead: behind
    assert group_round("me", 3, {"a": (5, ""), "b": (-1, "")}) == 3  # a member that sent no round is left out


def test_state_claim_checks_types_model_and_step_in_round() -> None:
    meta = {"round": 2, "step": 8, "digest": D1, "model_hash": "m"}
    assert state_claim(meta, 4, "m") == StateClaim(2, 8, D1)
    assert state_claim({**meta, "step": 11}, 4, "m") == StateClaim(2, 11, D1)  # mid-round (a checkpoint's)
    assert state_claim({**meta, "step": 10**9}, 4, "m") is None  # a step past its round: a jump
    assert state_claim({**meta, "model_hash": "other"}, 4, "m") is None
    assert state_claim({**meta, "round": True}, 4, "m") is None
    assert state_claim({**meta, "digest": "short"}, 4, "m") is None
    assert state_claim({**meta, "round": -1, "step": -4}, 4, "m") is None
    assert state_claim("not a dict", 4, "m") is None


def test_majority_donors() -> None:
    honest = StateClaim(3, 12, D1)
    assert majority_donors({"b": honest, "a": StateClaim(10**6, 4 * 10**6, D1), "c": honest}) == ["b", "c"]
    assert majority_donors({"b": honest, "a": StateClaim(4, 16, D2)}) == ["b"]  # a tie: the earlier round
    assert majority_donors({"b": honest, "a": StateClaim(3, 12, D2)}) == ["a"]  # same round: the lowest id
    assert majority_donors({}) == []


def share_poisoned(group: LocalGroup, peer_id: str, like: TrainingPeer, **claims: object) -> None:
    """What a forged donor offers: an honest-looking claim (model hash, the honest digest) over other tensors."""
    tensors = [t.clone() + 1.0 for t in like.state_tensors()]
    meta = {"round": 0, "step": 0, "model_hash": like.model_hash, "digest": state_digest(like.outer.state_tensors())}
    with group.lock:
        group.shared[peer_id] = ({**meta, **claims}, tensors)


def test_a_joiner_takes_the_majority_state_and_refuses_a_wrong_digest() -> None:
    group = LocalGroup(1)
    honest = tiny_peer("b", 0, group.member("b"))  # shares its start state (round 0, step 0)
    tiny_peer("c", 1, group.member("c"))
    share_poisoned(group, "a", honest)  # lowest id, claims the majority's digest, holds other tensors
    joiner = tiny_peer("z", 1, group.member("z"))
    with torch.no_grad():
        joiner.outer.slow[0].add_(1.0)  # a different start: joining must change it
    how = joiner.resume_or_join(join_timeout_s=5.0)
    assert "joined" in how, how
    assert joiner.status.states_refused == 1 and ("z", "a") in group.loads  # tried the forged one, refused it
    assert states_equal(joiner, honest)


def test_a_lone_donor_past_total_steps_is_refused() -> None:
    group = LocalGroup(1)
    honest = tiny_peer("b", 0, group.member("b"))
    total = honest.cfg.total_steps
    share_poisoned(group, "a", honest, round=total, step=total * honest.cfg.inner_steps)
    with group.lock:  # the forged donor's digest matches its tensors: only the step gives it away
        meta, tensors = group.shared["a"]
        n = len(honest.inner.params)
        group.shared["a"] = ({**meta, "digest": state_digest(tensors[n:])}, tensors)
        del group.shared["b"]
    joiner = tiny_peer("z", 1, group.member("z"))
    how = joiner.resume_or_join(join_timeout_s=5.0)
    assert how.startswith("started fresh") and joiner.status.step == 0 and joiner.status.states_refused == 1


def test_a_donor_claiming_a_later_step_is_outvoted() -> None:
    group = LocalGroup(1)
    honest = tiny_peer("b", 0, group.member("b"))
    tiny_peer("c", 1, group.member("c"))
    share_poisoned(group, "a", honest, round=10**6, step=4 * 10**6)  # past total_steps: would end everyone's run
    joiner = tiny_peer("z", 1, group.member("z"))
    assert "joined" in joiner.resume_or_join(join_timeout_s=5.0)
    assert joiner.status.step == 0 and ("z", "a") not in group.loads  # never downloaded from the liar
    assert states_equal(joiner, honest)


class LyingMember:
    """A group member that claims a round far ahead in every exchange."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.peer_id = inner.peer_id

    def step(self, tensors: list[torch.Tensor], *, round_index: int, **kwargs: object) -> object:
        return self.inner.step(tensors, round_index=10**6, **kwargs)

    def share_state(self, metadata: dict, tensors: list[torch.Tensor]) -> None:
        self.inner.share_state({**metadata, "round": 10**6, "step": 10**9}, tensors)

    def load_state(self, *args: object, **kwargs: object) -> object:
        return self.inner.load_state(*args, **kwargs)

    def donors(self, timeout_s: float) -> list[str]:
        return self.inner.donors(timeout_s)


def test_a_claimed_later_round_moves_no_honest_peer() -> None:
    group = LocalGroup(3)
    a, b = tiny_peer("a", 0, group.member("a")), tiny_peer("b", 1, group.member("b"))
    liar = tiny_peer("c", 1, LyingMember(group.member("c")))
    threads = [threading.Thread(target=p.run, args=(p.cfg.inner_steps,)) for p in (a, b, liar)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads)
    assert a.status.step == b.status.step == a.cfg.inner_steps and a.status.round_index == 1
    assert all(who not in ("a", "b") for who, _ in group.loads)  # no honest peer downloaded anything
    assert states_equal(a, b)


def test_a_peer_one_round_ahead_steps_back_to_the_groups_state() -> None:
    group = LocalGroup(2)
    a, b = tiny_peer("a", 0, group.member("a")), tiny_peer("b", 1, group.member("b"))
    b.status.step = b.cfg.inner_steps  # b started a round earlier: it exchanges round 2 while a exchanges round 1
    run_round([a, b])
    h = a.cfg.inner_steps
    assert (a.status.step, b.status.step) == (h, h) and (a.status.resyncs, b.status.resyncs) == (0, 1)
    assert group.loads == [("b", "a")]  # b took a's state after round 1; a, at the group's round, took nothing
    assert states_equal(a, b)
