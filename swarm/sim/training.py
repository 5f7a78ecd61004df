"""NoLoCo group formation under churn, with the real grouping code (training/outer.py): each round a training peer
hashes itself into a bucket whose count it derives from the size of its own membership view; a peer forms a group
when at least one other live peer computed the same group key.

Views differ under churn: a peer that left stays in others' views until it expires (`STATUS_MISSES` of its status
periods), a joiner is missing from them until its announce has spread, and a view never holds more than the
table's bound. `noloco_group_bits` depends on the view only through its size, so each peer's view is drawn as a
size (checked against the real function on explicit lists for a sample of peers). Knows ids and sizes.
"""

from __future__ import annotations

import random

from swarm.runtime.gossip_policy import STATUS_MISSES
from training.outer import noloco_bucket, noloco_group_bits, noloco_num_groups

CHECKED_PEERS = 16  # peers whose keys are recomputed from an explicit id list of their view's size


def group_success(n: int, rounds: int, round_s: float, session_mean_s: float, status_period_s: float,
                  join_known_s: float, max_peers: int, seed: int, group_size: int = 2) -> dict:  # fmt: skip
    """Share of live peers that found a partner, averaged over ``rounds`` outer rounds of ``round_s`` each, peers
    leaving after exponential sessions (mean ``session_mean_s``) and replaced by joiners."""
    rng = random.Random(seed)
    alive = {f"peer-{i}": -rng.uniform(0, session_mean_s) for i in range(n)}  # id -> join time (before 0)
    left: dict[str, float] = {}  # id -> when it left
    next_id = n
    expiry = STATUS_MISSES * status_period_s
    shares, checked = [], 0
    for r in range(rounds):
        now = r * round_s
        for pid in list(alive):  # churn since the last round
            if rng.random() < 1 - pow(2.718281828, -round_s / session_mean_s):
                del alive[pid]
                left[pid] = now - rng.uniform(0, round_s)
                alive[f"peer-{next_id}"] = now - rng.uniform(0, round_s)
                next_id += 1
        left = {p: t for p, t in left.items() if now - t <= expiry}
        stale = len(left)  # everyone still lists these
        unknown = sum(1 for t in alive.values() if now - t < join_known_s)
        keys: dict[str, str] = {}
        for pid in alive:
            view = min(len(alive) + stale - unknown + rng.randint(-1, 1), max_peers)  # +-1: who is mid-spread
            keys[pid] = _key(r, pid, view, group_size)
            if checked < CHECKED_PEERS:  # the size-only shortcut equals the real call on an explicit list
                explicit = [pid] + [f"view-{i}" for i in range(max(view, 1) - 1)]
                if noloco_group_bits(r, explicit, pid, group_size=group_size) != keys[pid]:
                    raise AssertionError("noloco_group_bits depends on more than the view's size")
                checked += 1
        count: dict[str, int] = {}
        for k in keys.values():
            count[k] = count.get(k, 0) + 1
        shares.append(sum(1 for k in keys.values() if count[k] >= 2) / len(keys))
    return {"success": sum(shares) / len(shares), "worst_round": min(shares), "rounds": rounds}


def _key(round_index: int, pid: str, view: int, group_size: int) -> str:
    """`noloco_group_bits` for a view of ``view`` peers, composed from the same functions it calls (building every
    peer's id list would cost N^2 at 10,000 peers; `CHECKED_PEERS` peers are checked against the real call)."""
    num_groups = noloco_num_groups(max(view, 1), group_size)
    width = max(1, (num_groups - 1).bit_length())
    return f"{round_index % 4:02b}{noloco_bucket(round_index, pid, 0, num_groups):0{width}b}"
