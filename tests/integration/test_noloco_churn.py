"""NoLoCo with 6 real peer processes on 127.0.0.1 (trainer, hivemind child, p2pd each), one killed and one joining
mid-run: every peer keeps averaging with a partner in every round but the one the leave or the join hit it in.

A peer's NoLoCo group depends only on itself, the round and the seed (hashed buckets of `target_group_size`), so
the others' groups do not move when the swarm changes. What each peer did is counted from its round records
(`rounds.jsonl`, written by `training.peer_main` after every round: exchanges that found a group and those that did
not), never from timings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_training_faults import Peers, status, tiny_config, wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(300)]
NAMES = [f"peer-{c}" for c in "abcdef"]
LEAVER, JOINER = "peer-e", "peer-g"


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    group = Peers(tmp_path)
    try:
        yield group
    finally:
        group.close()


def records(out: Path) -> list[dict[str, Any]]:
    try:
        lines = (out / "rounds.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def outcomes(out: Path) -> list[tuple[int, bool]]:
    """(round, whether the round's exchange found a group) for every round after the peer's first averaged one
    (before it the other peers may still be starting)."""
    prev_ok = prev_failed = 0
    seen: list[tuple[int, bool]] = []
    started = False
    for rec in records(out):
        ok, failed = rec["exchanges_ok"] - prev_ok, rec["exchanges_failed"] - prev_failed
        prev_ok, prev_failed = rec["exchanges_ok"], rec["exchanges_failed"]
        started = started or ok > 0
        if started and ok + failed:
            seen.append((rec["round"], ok > 0 and failed == 0 and rec["group_size"] >= 2))
    return seen


def averaged_rounds(out: Path) -> int:
    return sum(ok for _, ok in outcomes(out))


def rounds_past(outs: dict[str, Path], base: dict[str, int], n: int) -> bool:
    return all(status(out).get("round", 0) >= base[name] + n for name, out in outs.items())


def test_noloco_six_peers_one_leaves_one_joins(peers: Peers) -> None:
    cfg = tiny_config(outer_optimizer="noloco", target_group_size=3, min_group_size=2, matchmaking_time_s=2.0,
                      noloco_momentum=0.3)  # fmt: skip
    outs = {NAMES[0]: peers.start(NAMES[0], cfg, shard=0, initial=[], step_delay_s=0.1)}
    maddrs = wait_until("the first peer's multiaddrs", lambda: (outs[NAMES[0]] / "maddrs.json").exists(), 90)
    assert maddrs
    initial = json.loads((outs[NAMES[0]] / "maddrs.json").read_text())
    for i, name in enumerate(NAMES[1:], start=1):
        outs[name] = peers.start(name, cfg, shard=i % 4, initial=initial, step_delay_s=0.1)
    everyone = list(outs.values())
    wait_until("every peer to average twice", lambda: all(averaged_rounds(o) >= 2 for o in everyone), 150, everyone)

    peers.kill(LEAVER)
    survivors = {n: o for n, o in outs.items() if n != LEAVER}
    left_at = {n: status(o)["round"] for n, o in survivors.items()}
    wait_until("two rounds of every survivor after the leave", lambda: rounds_past(survivors, left_at, 2), 90, everyone)

    joined = peers.start(JOINER, cfg, shard=1, initial=initial, step_delay_s=0.1, join=True)
    outs[JOINER] = joined
    wait_until("the joiner to average three times", lambda: averaged_rounds(joined) >= 3, 120, [*everyone, joined])
    join_at = {n: status(o)["round"] for n, o in survivors.items()}
    wait_until("two rounds of every survivor after the join", lambda: rounds_past(survivors, join_at, 2), 90, everyone)
    peers.close()  # the records are complete: nothing writes them any more

    # NoLoCo's peers hold different states, so a joiner takes the one most donors claim when they agree, else it
    # starts fresh; either way its rounds are counted below
    assert status(joined)["started"].startswith(("joined", "started fresh")), status(joined)
    for name, out in {**survivors, JOINER: joined}.items():
        seen = outcomes(out)
        missed = [r for r, ok in seen if not ok]
        # at most the one round the leave or the join hit this peer in; every other round found a partner
        assert len(missed) <= 1, (name, seen)
        assert sum(ok for _, ok in seen) >= 3, (name, seen)
    # the survivors averaged in the rounds after the leave and after the join alike
    for name, out in survivors.items():
        rounds_ok = {r for r, ok in outcomes(out) if ok}
        assert any(r > left_at[name] for r in rounds_ok) and any(r > join_at[name] for r in rounds_ok), name
