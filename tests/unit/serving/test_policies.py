"""Token budget policy: every step fits the tightest TPOT target of the decoding requests (stall-free batches)."""

from __future__ import annotations

import pytest

from serving.config import ServingConfig
from serving.errors import OverloadedError
from serving.latency import LatencyModel
from serving.policies import SloAdmission, SloBudget
from serving.request import GenerateParams, Request

# 1 ms per step, 0.1 ms per token, 0.05 ms per request, attention work 1 us per 1000 token-positions.
LATENCY = LatencyModel(coefficients=[1e-3, 1e-4 / 1e-3, 5e-5 / 1e-2, 1e-9 / 1e-6])


def request(rid: str, prompt: int, computed: int, outputs: int = 0, tpot_ms: float | None = None) -> Request:
    params = GenerateParams(prompt_token_ids=[1] * prompt, max_new_tokens=64, tpot_ms=tpot_ms, request_id=rid)
    req = Request(rid, [1] * prompt, 64, params, arrival_s=0.0)
    req.output_ids = [2] * outputs
    req.num_computed_tokens = computed
    return req


def test_budget_fits_the_tightest_decoding_target_and_long_prompts_go_in_chunks() -> None:
    config = ServingConfig(max_batch_tokens=4096, tpot_budget_share=0.8)
    policy = SloBudget(LATENCY, config)
    decoders = [request(f"d{i}", 100, 100 + i, outputs=i + 1, tpot_ms=20.0 + i) for i in range(4)]
    prompt = request("p", 3000, 0, tpot_ms=5.0)  # a prefilling request's own target does not bind yet
    budget = policy.budget([*decoders, prompt])
    assert len(decoders) < budget < 3000
    shape = [(1, d.num_tokens) for d in decoders]
    chunk = budget - len(decoders)
    assert LATENCY.step_s([*shape, (chunk, chunk)]) <= 0.8 * 0.020
    assert LATENCY.step_s([*shape, (chunk + 8, chunk + 8)]) > 0.8 * 0.020  # and it is the largest that fits


def test_budget_is_the_cap_without_targets_and_falls_back_to_the_config_default() -> None:
    decoders = [request("d", 100, 100, outputs=1)]
    assert SloBudget(LATENCY, ServingConfig(max_batch_tokens=512)).budget(decoders) == 512
    with_default = SloBudget(LATENCY, ServingConfig(max_batch_tokens=512, default_tpot_ms=5.0))
    assert with_default.budget(decoders) < 512


def test_slo_admission_refuses_a_predicted_miss_unless_told_to_queue_it() -> None:
    waiting = [request(f"w{i}", 2000, 0, tpot_ms=50.0) for i in range(4)]
    late = request("late", 2000, 0, tpot_ms=50.0)
    late.params.ttft_ms = 1.0
    refusing = ServingConfig(max_batch_tokens=4096)
    with pytest.raises(OverloadedError, match="predicted ttft"):
        SloAdmission(refusing, LATENCY, SloBudget(LATENCY, refusing)).check(late, [], waiting)
    queueing = refusing.model_copy(update={"slo_refuse": False})
    predicted = SloAdmission(queueing, LATENCY, SloBudget(LATENCY, queueing)).check(late, [], waiting)
    assert predicted is not None and predicted * 1000 > 1.0  # admitted, and the prediction still says late


def test_budget_shrinks_by_the_step_margin_the_measured_mixed_steps_call_for() -> None:
    config = ServingConfig(max_batch_tokens=4096, tpot_budget_share=0.8)
    latency = LatencyModel(coefficients=list(LATENCY.coefficients))
    decoders = [request(f"d{i}", 100, 100 + i, outputs=i + 1, tpot_ms=20.0) for i in range(4)]
    prompt = request("p", 3000, 0)
    calm = SloBudget(latency, config).budget([*decoders, prompt])
    mixed = [(1, d.num_tokens) for d in decoders] + [(calm - 4, calm - 4)]
    for _ in range(20):  # the machine runs mixed steps 1.5x slower than predicted, and the factors lag behind
        latency.step_errors.append(1.5)
    assert latency.step_margin() == pytest.approx(1.5)
    noisy = SloBudget(latency, config).budget([*decoders, prompt])
    assert noisy < calm
    chunk = noisy - len(decoders)
    assert 1.5 * latency.step_s([*mixed[:4], (chunk, chunk)]) <= 0.8 * 0.020
