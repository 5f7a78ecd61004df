"""The latency model follows measured steps: overhead and compute calibrated apart, within bounds."""

from __future__ import annotations

import pytest

from serving.latency import FACTOR_BOUNDS, MARGIN_BOUNDS, MARGIN_WINDOW, LatencyModel, features, fit, profile_shapes

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


def test_the_step_margin_is_a_high_quantile_of_mixed_steps_errors_within_bounds() -> None:
    model = LatencyModel(coefficients=list(PROFILE))
    assert model.step_margin() == MARGIN_BOUNDS[0]  # no mixed step yet
    for _ in range(100):
        model.observe(DECODE, 3 * _machine(DECODE, 1.0, 1.0))  # decode-only steps never size the margin
    assert model.step_margin() == MARGIN_BOUNDS[0]
    # A mixed step's error is taken against what the model predicted before learning from it. One step in ten
    # running 1.4x long (another process took the core for a while) is a stall no chunk size avoids: it does not
    # shrink every chunk. One in three is how this machine runs mixed steps now: the margin covers it.
    rare, common = LatencyModel(coefficients=list(PROFILE)), LatencyModel(coefficients=list(PROFILE))
    for i in range(MARGIN_WINDOW):
        rare.observe(CHUNK, _machine(CHUNK, 1.0, 1.0) * (1.4 if i % 10 == 0 else 1.0))
        common.observe(CHUNK, _machine(CHUNK, 1.0, 1.0) * (1.4 if i % 3 == 0 else 1.0))
    assert rare.step_margin() < 1.1
    assert 1.2 < common.step_margin() <= 1.45
    model = common
    for _ in range(MARGIN_WINDOW):
        model.observe(CHUNK, 100 * _machine(CHUNK, 1.0, 1.0))  # seconds-long stalls: the margin stays bounded
    assert model.step_margin() == MARGIN_BOUNDS[1]


def test_a_profile_separates_the_context_read_from_the_attention_work() -> None:
    # A machine where reading a chunk's context back costs per context token, whatever the chunk's size.
    def machine(shape) -> float:
        tokens = sum(n for n, _ in shape)
        read = sum(ctx for n, ctx in shape if ctx > n)
        work = sum(n * ctx for n, ctx in shape)
        return 2e-3 + 5e-5 * tokens + 1e-5 * read + 2e-10 * work

    model = fit([(shape, machine(shape)) for shape in profile_shapes(2048, 2048)])
    late_small_chunk = [(1, 300)] * 4 + [(16, 1000)]
    assert model.profiled_step_s(late_small_chunk) == pytest.approx(machine(late_small_chunk), rel=0.02)
    assert len(model.coefficients) == len(features(late_small_chunk))
    # Profiles of the older four-term model still load: the context read is then free.
    old = LatencyModel(coefficients=[1e-3, 1.0, 0.0, 0.0])
    assert old.step_s([(1, 1000)]) == pytest.approx(1e-3 + 1e-3)
