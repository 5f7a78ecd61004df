"""TTFT predictions calibrated against achieved TTFTs: expected TTFT and the confidence a refusal needs."""

from __future__ import annotations

import pytest

from serving.config import ServingConfig
from serving.errors import OverloadedError
from serving.latency import MISS_CONFIDENCE, TTFT_MIN_SAMPLES, TTFT_WINDOW, LatencyModel
from serving.policies import SloAdmission, SloBudget
from serving.request import GenerateParams, Request


def test_correction_is_the_median_ratio_and_refusals_use_a_low_quantile() -> None:
    model = LatencyModel(coefficients=[1e-3, 1e-3, 0.0, 0.0])
    assert model.ttft_correction == 1.0 and model.ttft_refusal_factor() == 1.0  # nothing seen yet
    model.observe_ttft(1.0, 0.5)
    assert model.ttft_refusal_factor() == 0.5  # few samples: the best ratio seen
    for ratio in [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4]:
        model.observe_ttft(1.0, ratio)
    assert model.ttft_correction == pytest.approx(0.9)  # median of the 11 ratios
    ordered = sorted([0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4])
    assert model.ttft_refusal_factor() == ordered[int((1 - MISS_CONFIDENCE) * 11)]
    assert len(ordered) >= TTFT_MIN_SAMPLES


def test_only_recent_ratios_count_and_outliers_are_bounded() -> None:
    model = LatencyModel(coefficients=[1e-3, 1e-3, 0.0, 0.0])
    for _ in range(TTFT_WINDOW):
        model.observe_ttft(1.0, 3.0)
    for _ in range(TTFT_WINDOW):
        model.observe_ttft(1.0, 1.0)  # the machine got quieter: the old ratios are gone
    assert model.ttft_correction == 1.0
    model.observe_ttft(1.0, 1e6)
    assert max(model.ttft_ratios) == 20.0
    model.observe_ttft(1e-6, 1.0)  # a prediction of nothing teaches nothing
    assert len(model.ttft_ratios) == TTFT_WINDOW


def _request(prompt_tokens: int, ttft_ms: float) -> Request:
    params = GenerateParams(prompt_token_ids=[1] * prompt_tokens, ttft_ms=ttft_ms, request_id="r")
    return Request("r", [1] * prompt_tokens, 8, params, 0.0)


def test_admission_refuses_only_what_is_late_under_the_errors_seen() -> None:
    # 1 ms per token: a 400-token prompt is predicted at about 400 ms, against a 300 ms target.
    model = LatencyModel(coefficients=[0.0, 1.0, 0.0, 0.0])
    config = ServingConfig(max_batch_tokens=4096)
    admission = SloAdmission(config, model, SloBudget(model, config))
    with pytest.raises(OverloadedError):
        admission.check(_request(400, 300.0), [], [])
    # The engine's predictions have run pessimistic: achieved TTFTs were 0.6-1.0x of predicted.
    for i in range(20):
        model.observe_ttft(1.0, 0.6 + 0.02 * i)
    predicted = admission.check(_request(400, 300.0), [], [])  # 400 ms x 0.64 is within target: admitted
    assert predicted == pytest.approx(0.4, rel=0.05)
    with pytest.raises(OverloadedError) as err:  # 600 ms x 0.64 is not: still refused
        admission.check(_request(600, 300.0), [], [])
    assert "exceeds 300.0 ms" in str(err.value)
