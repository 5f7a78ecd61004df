"""The latency model follows measured steps: overhead and compute calibrated apart, within bounds."""

from __future__ import annotations

import pytest

from serving.latency import FACTOR_BOUNDS, LatencyModel

# Profile: 10 ms per step, 0.1 ms per token (no per-request or attention term), so shapes separate the two parts.
PROFILE = [10e-3, 0.1, 0.0, 0.0]
DECODE = [(1, 100)] * 4
CHUNK = [(1, 100)] * 4 + [(256, 256)]


def _machine(shape, overhead_factor: float, compute_factor: float) -> float:
    tokens = sum(n for n, _ in shape)
    return overhead_factor * 10e-3 + compute_factor * 1e-4 * tokens


def test_decode_steps_and_chunks_are_calibrated_apart() -> None:
    # The profile was taken under load: this machine runs the fixed overhead 4x faster but the compute only 2x.
    model = LatencyModel(coefficients=list(PROFILE))
    for i in range(300):
        shape = CHUNK if i % 5 == 0 else DECODE
        model.observe(shape, _machine(shape, 0.25, 0.5))
    assert model.factors[0] == pytest.approx(0.25, rel=0.05)
    assert model.factors[1] == pytest.approx(0.5, rel=0.05)
    for shape in (DECODE, CHUNK):
        assert model.step_s(shape) == pytest.approx(_machine(shape, 0.25, 0.5), rel=0.05)
    # One scalar correction fits neither shape: it lands between the two ratios.
    scalar = model.profiled_step_s(CHUNK) * model.correction
    assert abs(scalar - _machine(CHUNK, 0.25, 0.5)) > 0.1 * _machine(CHUNK, 0.25, 0.5)


def test_a_stall_moves_the_factors_within_bounds_and_old_steps_are_forgotten() -> None:
    model = LatencyModel(coefficients=list(PROFILE))
    for _ in range(50):
        model.observe(DECODE, _machine(DECODE, 1.0, 1.0))
    model.observe(DECODE, 10.0)  # one step stalled for seconds (another process had the core)
    assert FACTOR_BOUNDS[0] <= min(model.factors) and max(model.factors) <= FACTOR_BOUNDS[1]
    assert model.step_s(DECODE) < 3 * _machine(DECODE, 1.0, 1.0)
    for _ in range(2000):  # the machine got twice as slow and stayed so
        for shape in (DECODE, CHUNK):
            model.observe(shape, _machine(shape, 2.0, 2.0))
    assert model.step_s(CHUNK) == pytest.approx(_machine(CHUNK, 2.0, 2.0), rel=0.05)
