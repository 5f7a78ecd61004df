"""The coschedule bench's phase trace: at least 24 requests however low the rate, all arrivals within the phase
when the rate fills it."""

from __future__ import annotations

from swarm.bench.bench_coschedule import MIN_PHASE_REQUESTS, _trace


def test_a_low_rate_still_gets_enough_requests_a_high_one_stays_within_the_phase() -> None:
    slow = _trace(0.2, 30.0, seed=7)  # 6 arrivals expected in 30 s: the phase runs on past it
    assert len(slow) == MIN_PHASE_REQUESTS == 24
    assert slow[-1].arrival_s > 30.0
    fast = _trace(3.0, 30.0, seed=7)
    assert len(fast) > MIN_PHASE_REQUESTS and all(r.arrival_s <= 30.0 for r in fast)
    assert [r.arrival_s for r in _trace(3.0, 30.0, seed=7)] == [r.arrival_s for r in fast]  # seeded
