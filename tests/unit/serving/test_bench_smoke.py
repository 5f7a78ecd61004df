"""The whole serving bench at toy sizes on the tiny model: every system runs and the JSON has its shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serving.bench import BenchSettings, run_serving_bench
from serving.bench_workload import Mix


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_runs_every_system_and_reports_ratios(tmp_path: Path) -> None:
    small = Mix("toy", 24, 0.3, (8, 48), 8, 0.2, (4, 12))
    settings = BenchSettings(
        model="tiny",
        dtype="float32",
        threads=1,
        saturation_mix=small,
        saturation_requests=6,
        hf_generate_requests=2,
        goodput_mix=small,
        goodput_requests=4,
        probe_arrival_s=0.5,
        probes_per_system=2,
        hf_curve=True,
        hf_batch_rates=1,
        prefix_requests=2,
    )
    steps: list[str] = []
    result = run_serving_bench(settings, plot_path=tmp_path / "serve.png", progress=steps.append)
    json.dumps(result)  # serialisable as is
    assert result["bench"] == "serve"
    assert set(result["results"]["saturation"]) == {"engine", "engine_fcfs", "hf_generate", "hf_generate_batch"}
    for system in result["results"]["saturation"].values():
        assert system["output_tokens"] > 0 and system["output_tok_s"] > 0
    ratios = result["ratios"]
    assert ratios["throughput_vs_hf_generate"] > 0 and ratios["throughput_vs_hf_generate_batch"] > 0
    assert {"goodput_vs_fcfs", "goodput_vs_fcfs_mean_tpot", "ttft_prediction_error"} <= set(ratios)
    assert ratios["prefix_cache_ttft_gain"] > 0 and ratios["fraction_of_compute_limit"] > 0
    good = result["results"]["goodput"]
    for system in ("engine", "engine_fcfs"):
        assert set(good["capacity_req_s_by_definition"][system]) == {"with_stalls", "mean_tpot"}
        assert sum(p["system"] == system for p in good["probes"]) <= 2  # the probe bound holds
    assert good["ttft_prediction"]["requests"] > 0  # the engine predicted TTFTs and they were compared
    engine_probes = [p for p in good["probes"] if p["system"] in ("engine", "engine_fcfs")]
    assert all(p["steps"]["margin"] >= 1.0 for p in engine_probes)  # each probe says how steps met predictions
    assert result["results"]["prefix_cache"]["prompt_tokens_cached"]["off"] == 0
    systems = {p["system"] for p in result["results"]["goodput"]["probes"]}
    assert systems == {"engine", "engine_fcfs", "hf_generate", "hf_generate_batch"}
    assert (tmp_path / "serve.png").stat().st_size > 1000
    parts = result["results"]["phase_parts_wall_s"]  # where the run's time went, part by part
    assert {"warm_up", "engines", "hf_generate", "hf_generate_batch"} == set(parts["saturation"])
    assert {"slo_calibration", "capacity_search_engine", "capacity_search_engine_fcfs", "hf_curves"} == set(
        parts["goodput"]
    )
    assert {"start", "saturation", "goodput", "prefix_cache", "compute_limit"} == set(result["results"]["phase_wall_s"])
    # the progress bar is told each part as it begins, every capacity probe among them
    probes = [p for p in good["probes"] if p["system"] in ("engine", "engine_fcfs")]
    assert steps[0] == "throughput: warm-up" and steps[-2:] == ["prefix cache", "compute limit"]
    assert "capacity: SLO calibration" in steps
    assert sum(step.startswith("capacity: engine at") or step.startswith("capacity: FCFS engine at")
               for step in steps) == len(probes)  # fmt: skip
