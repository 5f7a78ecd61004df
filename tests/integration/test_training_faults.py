"""Elastic training with real peer processes on 127.0.0.1: kill -9 mid-round, a late joiner, resume; peers
whose outer states diverged agree again after one round.

Each peer is `python -m training.peer_main` (its own process group: trainer, hivemind child, p2pd), so a
kill -9 of the group is an abrupt death of the whole peer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from comms.averaging import HivemindAverager
from training.config import TrainingConfig
from training.data import TokenData, load_corpus
from training.trainer import TrainingPeer, averaging_settings

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(240)]


def tiny_config(**update: Any) -> TrainingConfig:
    base = dict(
        model={"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
        inner_steps=4, batch_size=2, seq_len=16, warmup_steps=2, total_steps=400, max_corpus_bytes=200_000,
        codec="fp32", min_group_size=2, target_group_size=8, matchmaking_time_s=1.0, round_timeout_s=8.0,
        allreduce_timeout_s=6.0, request_timeout_s=2.0, eval_batches=1,
    )  # fmt: skip
    base.update(update)
    return TrainingConfig.model_validate(base)


class Peers:
    """Starts peer processes in their own sessions and kills every group on exit (even on test failure)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cfg: TrainingConfig, *, shard: int, initial: list[str], **extra: Any) -> Path:
        out = self.tmp / name
        out.mkdir(exist_ok=True)
        spec = {
            "config": json.loads(cfg.model_dump_json()), "peer_id": name, "shard_index": shard, "num_shards": 4,
            "initial_peers": initial, "steps": 2000, "step_delay_s": 0.15, "out_dir": str(out), "prefix": "ft",
            **extra,
        }  # fmt: skip
        (out / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "training.peer_main", str(out / "spec.json")], env=env, start_new_session=True
        )
        return out

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    group = Peers(tmp_path)
    try:
        yield group
    finally:
        group.close()


def wait_until(what: str, cond: Callable[[], Any], timeout_s: float, peers: list[Path] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    seen = {p.name: status(p) for p in peers or []}
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; statuses: {seen}")


def status(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def weights(out: Path, round_index: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"round-{round_index}.safetensors"))


def test_kill_mid_round_then_late_joiner_matches(peers: Peers) -> None:
    cfg = tiny_config()
    a = peers.start("peer-a", cfg, shard=0, initial=[])
    maddrs = wait_until(
        "peer-a's multiaddrs", lambda: (a / "maddrs.json").exists() and (a / "maddrs.json").read_text(), 60
    )
    initial = json.loads(maddrs)
    b = peers.start("peer-b", cfg, shard=1, initial=initial)
    c = peers.start("peer-c", cfg, shard=2, initial=initial)
    wait_until("a 3-peer round", lambda: len(status(c).get("last_group", [])) == 3, 90)

    peers.kill("peer-c")  # right after its round: it dies during the next round's inner steps
    round_a = status(a)["round"]
    round_timeout = cfg.round_timeout_s + cfg.allreduce_timeout_s
    wait_until(
        "a and b to finish a round without c",
        lambda: all(status(x)["round"] >= round_a + 2 and len(status(x).get("last_group", [])) == 2 for x in (a, b)),
        4 * round_timeout + 30,  # a deadline for a busy machine: the round timeouts themselves bound the wait
        [a, b],
    )

    d = peers.start("peer-d", cfg, shard=3, initial=initial, join=True)
    st_d = wait_until(
        "d to join", lambda: status(d) if "joined" in status(d).get("started", "") else None, 60, [a, b, d]
    )
    first_round = int(st_d["step"]) // cfg.inner_steps
    done = wait_until(
        "d's first round with a",
        lambda: (
            status(d) if status(d).get("round", 0) > first_round and len(status(d).get("last_group", [])) == 3 else None
        ),
        60,
        [a, b, d],
    )
    r = done["round"]
    wait_until("a's and b's weights of the same round", lambda: all((x / f"round-{r}.safetensors").exists()
                                                                      for x in (a, b)), 30)  # fmt: skip
    wa, wb, wd = weights(a, r), weights(b, r), weights(d, r)
    assert wa.keys() == wd.keys() == wb.keys()

    def same(x: dict, y: dict) -> bool:
        return all(torch.allclose(x[n], y[n], atol=1e-5) for n in x)

    # If the kill landed inside an all-reduce the survivors kept different values for the dead peer's part; the
    # joiner loaded one survivor's state. In d's first full round the member whose state differed from the
    # group's reference took a member's state after the round: all three agree.
    seen = {x.name: status(x) for x in (a, b, d)}
    assert same(wa, wb) and same(wd, wa), (r, same(wa, wb), same(wd, wa), same(wd, wb), seen)


def test_diverged_peers_agree_after_one_round() -> None:
    """Two trainers (threads here, each with its own averaging process) whose outer states differ, as after a
    kill inside an all-reduce: after one round through real hivemind, one took the other's state by name."""
    cfg = tiny_config(max_corpus_bytes=50_000)
    data = TokenData(load_corpus(None, cfg.max_corpus_bytes), cfg.eval_fraction, cfg.seq_len)
    peers: list[TrainingPeer] = []
    try:
        for i in range(2):
            initial = tuple(peers[0].averager.visible_maddrs) if peers else ()
            peer = TrainingPeer(cfg, data, peer_id=f"p{i}", shard_index=i, num_shards=2)
            peer.averager = HivemindAverager(
                averaging_settings(cfg, prefix="diverged", initial_peers=initial),
                [(peer.exchange_len,)],
                peer.model_hash,
            )
            peers.append(peer)
            peer.averager.start()
        with torch.no_grad():
            peers[1].outer.slow[0].add_(1e-3)
            peers[1].inner.params[0].copy_(peers[1].outer.slow[0])
        for p in peers:
            p.share_state()

        def one_round() -> None:
            threads = [threading.Thread(target=p.run, args=(cfg.inner_steps,)) for p in peers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)

        one_round()
        assert all(p.status.exchanges_ok == 1 and len(p.status.last_group) == 2 for p in peers)
        assert sorted(p.status.resyncs for p in peers) == [0, 1]  # the one not holding the reference took it
        for x, y in zip(peers[0].state_tensors(), peers[1].state_tensors(), strict=True):
            assert torch.equal(x, y)
        one_round()  # from equal states: equal again, nothing loaded
        assert sorted(p.status.resyncs for p in peers) == [0, 1]
        for x, y in zip(peers[0].state_tensors(), peers[1].state_tensors(), strict=True):
            assert torch.equal(x, y)
    finally:
        for p in peers:
            if p.averager is not None:
                p.averager.close()
            p.close()
