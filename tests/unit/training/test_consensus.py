"""Peers whose outer states diverged (a kill inside an all-reduce) agree again after one DiLoCo round: the
reference choice is deterministic, and two real trainers averaging through an in-process group end the round
with equal states, the one that differed having taken the other's."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from comms.averaging import AveragingError, AveragingResult
from protocols.errors import ErrorCode
from training.config import TrainingConfig
from training.consensus import reference_holders, state_digest
from training.data import TokenData
from training.trainer import TrainingPeer

pytestmark = pytest.mark.timeout(60)


def test_digest_is_bitwise() -> None:
    x = [torch.ones(3), torch.zeros(2, 2)]
    assert state_digest(x) == state_digest([t.clone() for t in x])
    y = [x[0].clone(), x[1].clone()]
    y[1][0, 0] = 1e-30
    assert state_digest(x) != state_digest(y)


def test_reference_is_the_majority_then_the_lowest_holder() -> None:
    members = {"a": (5, "X"), "b": (5, "Y"), "d": (5, "X")}
    assert reference_holders("b", "Y", 5, members) == ["a", "d"]  # X held by a and d: b takes theirs
    assert reference_holders("a", "X", 5, members) == []
    assert reference_holders("d", "X", 5, members) == []
    tie = {"a": (5, "Y"), "b": (5, "X")}
    assert reference_holders("a", "Y", 5, tie) == []  # a tie: the digest of the lowest peer id wins
    assert reference_holders("b", "X", 5, tie) == ["a"]


def test_reference_ignores_other_rounds_and_missing_digests() -> None:
    members = {"a": (4, "X"), "b": (5, "Y"), "c": (5, ""), "e": (-1, "X")}
    assert reference_holders("b", "Y", 5, members) == []  # alone at round 5 with a digest


class LocalGroup:
    """An in-process stand-in for the hivemind group: every member's `step` waits for all, returns the exact
    mean and everyone's (round, digest); `load_state(peer=...)` returns what that member last shared."""

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size, timeout=30)
        self.lock = threading.Lock()
        self.inputs: dict[str, tuple[torch.Tensor, int, str]] = {}
        self.shared: dict[str, tuple[dict[str, Any], list[torch.Tensor]]] = {}
        self.loads: list[tuple[str, str | None]] = []

    def member(self, peer_id: str) -> LocalMember:
        return LocalMember(self, peer_id)


class LocalMember:
    def __init__(self, group: LocalGroup, peer_id: str) -> None:
        self.group, self.peer_id = group, peer_id

    def step(
        self,
        tensors: list[torch.Tensor],
        *,
        round_index: int,
        timeout_s: float,
        group_bits: str | None = None,
        digest: str = "",
        **_: object,
    ) -> AveragingResult:  # fmt: skip  (weight, pace_s: unused here)
        g = self.group
        with g.lock:
            g.inputs[self.peer_id] = (tensors[0].clone(), round_index, digest)
        g.barrier.wait()
        with g.lock:
            mean = torch.stack([t for t, _, _ in g.inputs.values()]).mean(0)
            members = {p: (r, d) for p, (_, r, d) in g.inputs.items()}
        g.barrier.wait()  # everyone has read this round's inputs
        return AveragingResult([mean], len(members), sorted(members), 0.0, members)

    def share_state(self, metadata: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        with self.group.lock:
            self.group.shared[self.peer_id] = (dict(metadata), [t.clone() for t in tensors])

    def load_state(
        self, timeout_s: float, peer: str, min_step: int = 0, metadata_only: bool = False
    ) -> tuple[dict[str, Any], list[torch.Tensor]]:
        with self.group.lock:
            if peer not in self.group.shared:
                raise AveragingError(ErrorCode.TIMEOUT, f"{peer} shares no state")
            meta, tensors = self.group.shared[peer]
            if metadata_only or meta["step"] < min_step:
                return dict(meta), []
            self.group.loads.append((self.peer_id, peer))
            return dict(meta), [t.clone() for t in tensors]

    def donors(self, timeout_s: float) -> list[str]:
        with self.group.lock:
            return sorted(p for p in self.group.shared if p != self.peer_id)


def tiny_peer(peer_id: str, shard: int, member: LocalMember, peers: Any = None) -> TrainingPeer:
    cfg = TrainingConfig.model_validate(
        {"model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
         "inner_steps": 3, "batch_size": 2, "seq_len": 16, "warmup_steps": 2, "total_steps": 30, "codec": "fp32",
         "round_timeout_s": 10.0}
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    data = TokenData(torch.randint(0, 256, (20_000,), generator=gen), 0.05, 16)
    peer = TrainingPeer(cfg, data, peer_id=peer_id, shard_index=shard, num_shards=2, averager=member, peers=peers)
    peer.share_state()
    return peer


def run_round(peers: list[TrainingPeer]) -> None:
    threads = [threading.Thread(target=p.run, args=(p.cfg.inner_steps,)) for p in peers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert not any(t.is_alive() for t in threads)


def states_equal(x: TrainingPeer, y: TrainingPeer) -> bool:
    return all(torch.equal(a, b) for a, b in zip(x.state_tensors(), y.state_tensors(), strict=True))


def test_diverged_peer_takes_the_reference_state_after_one_round() -> None:
    group = LocalGroup(2)
    a, b = tiny_peer("a", 0, group.member("a")), tiny_peer("b", 1, group.member("b"))
    assert states_equal(a, b)  # same seed: same start
    with torch.no_grad():  # what a part kept from a dead reducer looks like: b's outer state differs
        b.outer.slow[0].add_(1e-3)
        b.inner.params[0].copy_(b.outer.slow[0])
    run_round([a, b])
    assert states_equal(a, b)
    assert (a.status.resyncs, b.status.resyncs) == (0, 1)  # tie: the lowest peer id's state is the reference
    assert ("b", "a") in group.loads and all(who == "b" for who, _ in group.loads)
    run_round([a, b])  # agreeing peers stay equal without loading anything
    assert states_equal(a, b)
    assert (a.status.resyncs, b.status.resyncs) == (0, 1)


def test_agreeing_peers_never_load_state() -> None:
    group = LocalGroup(2)
    a, b = tiny_peer("a", 0, group.member("a")), tiny_peer("b", 1, group.member("b"))
    run_round([a, b])
    run_round([a, b])
    assert states_equal(a, b) and a.status.step == b.status.step == 6
    assert group.loads == [] and a.status.resyncs == b.status.resyncs == 0


class DyingMember(LocalMember):
    """A member whose averaging process has died: its exchange fails, and so does sharing its state."""

    def step(self, tensors: list[torch.Tensor], **_: object) -> AveragingResult:
        raise AveragingError(ErrorCode.INTERNAL, "averaging process exited (-9)")

    def share_state(self, metadata: dict[str, Any], tensors: list[torch.Tensor]) -> None:
        raise AveragingError(ErrorCode.INTERNAL, "averaging process pipe broke: [Errno 32] Broken pipe")


def test_a_dead_averaging_process_costs_the_round_s_average_and_share_not_the_training() -> None:
    peer = tiny_peer("a", 0, DyingMember(LocalGroup(1), "a"))
    peer.run(2 * peer.cfg.inner_steps)  # two round boundaries, each with a failed exchange and a failed share
    assert peer.status.step == 2 * peer.cfg.inner_steps
    assert peer.status.round_index == 2


class CountingMember(LocalMember):
    """A member that counts the exchanges it is asked for (and would wait for a group that never comes)."""

    def __init__(self, group: LocalGroup, peer_id: str) -> None:
        super().__init__(group, peer_id)
        self.steps = 0

    def step(self, tensors: list[torch.Tensor], **_: object) -> AveragingResult:
        self.steps += 1
        raise AveragingError(ErrorCode.TIMEOUT, "no group formed before the round's timeout")


def test_a_peer_that_knows_no_other_training_peer_applies_its_update_without_waiting() -> None:
    """With a view of the swarm's training peers that holds only itself, a round asks the averager for nothing
    (a lone node would otherwise wait `round_timeout_s` for a group every round); once a second peer shows up,
    the next round exchanges again."""
    view = ["a"]
    member = CountingMember(LocalGroup(1), "a")
    peer = tiny_peer("a", 0, member, peers=lambda: list(view))
    h = peer.cfg.inner_steps
    peer.run(2 * h)
    assert (member.steps, peer.status.rounds_alone, peer.status.exchanges_failed) == (0, 2, 0)
    assert peer.status.step == 2 * h and peer.status.round_index == 2
    view.append("b")
    peer.run(h)
    assert (member.steps, peer.status.rounds_alone, peer.status.exchanges_failed) == (1, 2, 1)
