"""Gossip periods and the swarm-size sketch: periods grow with N so a node receives a flat number of statuses per
second; the estimate is exact below K ids, close above, and bounded in memory whatever it is fed."""

from __future__ import annotations

import random

import pytest

from protocols.status import MAX_STATUS_PERIOD_S
from swarm.runtime.gossip_policy import SizeEstimate, announce_period_s, expiry_s, status_period_s


def test_status_period_is_the_heartbeat_while_small_and_n_over_budget_past_that() -> None:
    assert status_period_s(10, heartbeat_s=2.0, budget_msgs_s=25.0) == 2.0
    assert status_period_s(1000, heartbeat_s=2.0, budget_msgs_s=25.0) == pytest.approx(40.0)
    assert status_period_s(1e9, heartbeat_s=2.0, budget_msgs_s=25.0) == MAX_STATUS_PERIOD_S
    for n in (100, 1000, 10_000):  # statuses received per node per second: flat
        assert n / status_period_s(n, 2.0, 25.0) <= 25.0 + 1e-9
    assert announce_period_s(1000, 2.0, 25.0) > status_period_s(1000, 2.0, 25.0)


def test_expiry_follows_the_peers_own_period_with_a_floor() -> None:
    assert expiry_s(2.0, floor_s=10.0) == 10.0
    assert expiry_s(100.0, floor_s=10.0) == 300.0


def test_size_estimate_is_exact_below_k_and_close_above() -> None:
    sketch = SizeEstimate(k=256, salt=b"fixed-salt-for-a-test")
    for i in range(100):
        sketch.add(f"peer-{i}", now=0.0)
        sketch.add(f"peer-{i}", now=1.0)  # repeats do not count
    assert sketch.estimate() == 101
    for i in range(100, 20_000):
        sketch.add(f"peer-{i}", now=1.0)
    assert len(sketch) == 256
    assert sketch.estimate() == pytest.approx(20_001, rel=0.2)


def test_size_estimate_forgets_silent_ids() -> None:
    sketch = SizeEstimate(k=16, salt=b"s")
    for i in range(10):
        sketch.add(f"old-{i}", now=0.0)
    sketch.add("fresh", now=50.0)
    sketch.expire(now=60.0, horizon_s=30.0)
    assert sketch.estimate() == 2


def test_random_ids_cannot_pick_their_way_into_the_sketch() -> None:
    """Without the node's secret, an attacker's ids land in the bottom-K like anyone's: in proportion to count."""
    sketch = SizeEstimate(k=64, salt=b"secret")
    rng = random.Random(3)
    for i in range(3000):
        sketch.add(f"honest-{i}", now=0.0)
        sketch.add(f"sybil-{rng.getrandbits(64)}", now=0.0)
    share = sum(p.startswith("sybil") for p in sketch._kept) / len(sketch)
    assert 0.25 < share < 0.75
