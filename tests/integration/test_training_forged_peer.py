"""A forged training peer among honest ones, over real hivemind on 127.0.0.1: it claims a round far ahead, offers a
poisoned state under the honest digest as the self-declared best donor, then states past the run's end, and sends
parts with weight 1e30, NaN and negative weights, NaN values, huge norms and wrong shapes
(`tests.integration.forged_worker`). Every one of those parts is one the reducers exclude, so the documented bound
on what one sender can move (README, training) is zero here: the honest peers end with the weights of an
honest-only run from the same seeds, up to the order of fp32 sums; and every honest peer finishes its rounds."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from typing import Any

import pytest
import torch

from comms.averaging import HivemindAverager
from training.config import TrainingConfig
from training.data import TokenData
from training.trainer import TrainingPeer, averaging_settings

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(240)]
ROUNDS = 4  # the first four of the forged worker's ATTACKS (the others are in tests/unit/comms)
HONEST = ("a", "b", "c")  # c joins: it starts from other weights and downloads a donor's state


class ForgedAverager(HivemindAverager):
    worker_module = "tests.integration.forged_worker"


def tiny_config(group_size: int) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {"model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
         "inner_steps": 2, "batch_size": 2, "seq_len": 16, "warmup_steps": 2, "total_steps": 40, "codec": "fp32",
         "min_group_size": 3, "target_group_size": group_size, "matchmaking_time_s": 1.5, "round_timeout_s": 15.0,
         "allreduce_timeout_s": 8.0, "request_timeout_s": 3.0, "eval_batches": 1}
    )  # fmt: skip


def corpus() -> TokenData:
    gen = torch.Generator().manual_seed(0)
    return TokenData(torch.randint(0, 256, (20_000,), generator=gen), 0.05, 16)


def wait_for(what: str, cond: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_swarm(with_forged: bool) -> tuple[dict[str, TrainingPeer], int, int]:
    """Train a, b (and the forged f) from the same seed, c joining from a donor, ROUNDS rounds; returns the
    peers (averagers closed), the parts their reducers refused and the rounds the forged peer was in a group."""
    names = [*HONEST, "f"] if with_forged else list(HONEST)
    cfg = tiny_config(len(names))
    data = corpus()
    peers: dict[str, TrainingPeer] = {}
    forged_rounds = 0
    try:
        for i, name in enumerate(names):
            # same shards in both runs; a round clock that counts its reads instead of seconds, so no round is cut
            # at a pace deadline in one run and not in the other (every step reads it equally often)
            peer = TrainingPeer(cfg, data, peer_id=name, shard_index=i, num_shards=4, clock=itertools.count().__next__)
            first = next(iter(peers.values()), None)
            settings = averaging_settings(
                cfg, prefix="forged", initial_peers=tuple(first.averager.visible_maddrs) if first else ()
            )
            settings = dataclasses.replace(settings, declare_state_period_s=1.0)
            kind = ForgedAverager if name == "f" else HivemindAverager
            peer.averager = kind(settings, [(peer.exchange_len,)], peer.model_hash)
            peers[name] = peer
            peer.averager.start()
        for name in names:
            if name != "c":
                peers[name].share_state()
        c = peers["c"]
        with torch.no_grad():
            for p in c.inner.params:
                p.add_(0.5)
            c.outer.slow[0].add_(0.5)
        donors = len(names) - 1
        wait_for("every donor's declaration", lambda: len(c.averager.donors(timeout_s=10.0)) >= donors, 30)
        assert "joined" in c.resume_or_join(join_timeout_s=20.0)
        c.share_state()
        for _ in range(ROUNDS):
            threads = [threading.Thread(target=p.run, args=(cfg.inner_steps,)) for p in peers.values()]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads)
            for name in HONEST:  # every honest peer averaged with every other honest peer
                assert set(HONEST) <= {n for n in names if peers[n].averager.peer_id in peers[name].status.last_group}
            # on a busy machine the honest three may have formed their group before f arrived: that round
            # carried no attack (the forged worker's next one waits for its next group)
            forged_rounds += int(with_forged and peers["f"].averager.peer_id in peers["a"].status.last_group)
        return peers, sum(p.averager.counters.parts_refused for p in peers.values()), forged_rounds
    finally:
        for peer in peers.values():
            if peer.averager is not None:
                peer.averager.close()
            peer.close()


def test_forged_peer_moves_no_honest_weight_and_stops_nobody() -> None:
    honest_only, refused_without, _ = run_swarm(with_forged=False)
    attacked, refused_with, forged_rounds = run_swarm(with_forged=True)
    assert refused_without == 0
    # one member reduces this small vector each round: whichever it is, it refused the forged part (the forged
    # peer, reducing, refuses its own NaN-weighted one)
    assert forged_rounds >= 1 and refused_with == forged_rounds
    start = TrainingPeer(tiny_config(3), corpus(), peer_id="s", shard_index=0, num_shards=3).state_tensors()
    for name in HONEST:
        peer, reference = attacked[name], honest_only[name]
        assert peer.status.step == reference.status.step == ROUNDS * peer.cfg.inner_steps
        assert peer.status.exchanges_ok == ROUNDS and peer.status.exchanges_failed == 0
        assert peer.status.resyncs == 0
        for got, want in zip(peer.state_tensors(), reference.state_tensors(), strict=True):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), (name, float((got - want).abs().max()))
        assert any(not torch.allclose(x, y) for x, y in zip(peer.state_tensors(), start, strict=True))
    for name in HONEST[1:]:  # the honest peers agree bitwise
        for x, y in zip(attacked[name].state_tensors(), attacked["a"].state_tensors(), strict=True):
            assert torch.equal(x, y)
