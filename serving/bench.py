"""`swarm bench serve`: the engine against transformers `generate()`, `generate_batch()` and FCFS batching.

Two measurements, all systems in one run on the same seeded requests: output tokens/s at saturation (every
request queued at t=0) on a decode-heavy mix, and capacity at SLO (highest Poisson rate at which >= 90% of all
requests sent meet both TTFT and TPOT targets, refusals counting as misses; found by bracketing then bisection)
on a long-prompt mix. SLOs are scale-free: k x this machine's isolated prefill / decode step, measured here.
A request meets its TPOT target when its mean TPOT is within it and at most one of its inter-token gaps exceeds
it (`RequestRecord.meets`): stalls count, as in Sarathi-Serve's TBT SLO. Each probe also reports attainment
under the mean alone (`slo_attainment_mean_tpot`, vLLM's goodput definition).
This module orchestrates and reports; it returns a dict and knows nothing about the CLI or JSON files.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from serving.bench_capacity import SystemSearch, misses_to_fail
from serving.bench_drivers import (
    measure_hf_generate,
    replay_sequential,
    run_engine_trace,
    run_hf_continuous_batching,
)
from serving.bench_prefix import prefix_cache_gain
from serving.bench_workload import (
    DECODE_HEAVY,
    LONG_PROMPT,
    BenchRequest,
    Mix,
    RequestRecord,
    make_requests,
    summarize,
    ttft_prediction,
)
from serving.compute_limit import compute_limit
from serving.config import ServingConfig
from serving.engine import Engine
from serving.request import GenerateParams

# First probe at this share of what the machine could serve back to back: both systems' capacities lie below
# it on this mix, and a probe's length grows as its rate falls, so the search starts from above and not far.
START_LOAD = 0.5


@dataclass
class BenchSettings:
    """Sizes and knobs of one bench run (`for_size` gives the --quick and default sizes)."""

    model: str = "default-random"  # the default network with seeded weights: answers run to their lengths
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    seed: int = 0
    saturation_mix: Mix = DECODE_HEAVY
    saturation_requests: int = 128
    hf_generate_requests: int = 16  # one-at-a-time throughput does not depend on the queue: a prefix suffices
    goodput_mix: Mix = LONG_PROMPT
    goodput_requests: int = 40  # fewest requests per capacity probe
    probe_arrival_s: float = 20.0  # and at least this long a stretch of arrivals: a short burst never queues up
    count_stalls: bool = True  # TPOT check: mean and stalls (True) or the mean alone (see RequestRecord.meets)
    probes_per_system: int = 20  # most probes per system; a search ends once its bracket is within 10%
    probes_per_definition: int = 14  # most probes one definition's search may ask for (the other gets the rest)
    search_halvings: int = 5  # a bounded search: no probe below start rate / 2**this (capacity reported as 0)
    prefix_requests: int = 12  # shared-prefix requests, each served with the prefix cache on and off
    hf_curve: bool = True  # HF generate attainment curve on the long-prompt mix (replayed service times)
    hf_batch_rates: int = 2  # live HF continuous-batching runs on the long-prompt mix, for the plot
    ttft_slo_factor: float = field(default_factory=lambda: ServingConfig().ttft_slo_factor)
    tpot_slo_factor: float = field(default_factory=lambda: ServingConfig().tpot_slo_factor)
    max_batch_tokens: int = field(default_factory=lambda: ServingConfig().max_batch_tokens)
    kv_cache_bytes: int = field(default_factory=lambda: ServingConfig().kv_cache_bytes)

    @classmethod
    def for_size(cls, quick: bool, **overrides: object) -> BenchSettings:
        size: dict[str, object] = {}
        if quick:
            size = dict(
                saturation_requests=64,
                hf_generate_requests=8,
                goodput_requests=24,
                probe_arrival_s=8.0,
                probes_per_system=16,
                probes_per_definition=11,
                search_halvings=3,
                prefix_requests=6,
                hf_batch_rates=0,
                hf_curve=False,
            )
        size.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**size)

    def engine_config(self, slo: bool, latency_profile_path: str | None = None) -> ServingConfig:
        return ServingConfig(
            latency_profile_path=latency_profile_path,
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            num_threads=self.threads,
            chunked_prefill=slo,
            slo_admission=slo,
            max_batch_tokens=self.max_batch_tokens,
            kv_cache_bytes=self.kv_cache_bytes,
            ttft_slo_factor=self.ttft_slo_factor,
            tpot_slo_factor=self.tpot_slo_factor,
        )


@dataclass
class Slo:
    ttft_s: float
    tpot_s: float
    isolated_prefill_s: float
    isolated_decode_s: float


def calibrate_slo(engine: Engine, requests: list[BenchRequest], settings: BenchSettings) -> Slo:
    """Isolated prefill of the median prompt and isolated single-request decode step, on this machine now."""
    prompt = sorted(requests, key=lambda r: len(r.prompt_ids))[len(requests) // 2].prompt_ids
    prefill, decode = [], []
    for _ in range(3):
        engine.reset_prefix_cache()  # each run prefills the whole prompt, as a new prompt would
        prefill.append(engine.generate(GenerateParams(prompt_token_ids=prompt, max_new_tokens=1)).timings["ttft_ms"])
        short = GenerateParams(prompt_token_ids=prompt[:32], max_new_tokens=32)
        engine.reset_prefix_cache()
        decode.append(engine.generate(short).timings["tpot_ms"])
    p_s, d_s = statistics.median(prefill) / 1000, statistics.median(decode) / 1000
    return Slo(settings.ttft_slo_factor * p_s, settings.tpot_slo_factor * d_s, p_s, d_s)


def probe_requests(settings: BenchSettings, rate: float) -> list[BenchRequest]:
    """The trace of one capacity probe at `rate`: enough requests to span `probe_arrival_s` of arrivals, so the
    queue reaches the state that rate sustains (a fixed count at a high rate is a burst that ends before it)."""
    n = max(settings.goodput_requests, math.ceil(rate * settings.probe_arrival_s))
    return make_requests(settings.goodput_mix, n, rate, settings.seed + 1, 256)


def _engine_probe(engine: Engine, settings: BenchSettings, slo: Slo, log: list[dict], name: str):
    def probe(rate: float) -> float:
        reqs = probe_requests(settings, rate)
        # Far over capacity the queue drains for long after the last arrival: the probe is a failure by then.
        timeout = reqs[-1].arrival_s + 2 * settings.probe_arrival_s
        engine.reset_prefix_cache()  # probes reuse prompts: no probe may find an earlier one's in the cache
        # Once enough requests missed their TTFT target the probe has failed under both definitions: it stops
        # there (what it did not finish is abandoned, a miss), so a rate far over capacity costs little time.
        records, wall = run_engine_trace(engine, reqs, slo.ttft_s, slo.tpot_s, timeout, misses_to_fail(len(reqs)))
        summary = summarize(records, wall, slo.ttft_s, slo.tpot_s, settings.count_stalls)
        log.append({"system": name, "rate_req_s": rate, **summary, "steps": step_errors(engine)})
        return summary

    return probe


def step_errors(engine: Engine) -> dict:
    """How the engine's recent mixed steps (decodes beside a prefill chunk) compared with their predicted time,
    and the margin its step budgets divide the TPOT target by now."""
    errors = sorted(engine.latency.step_errors)
    if not errors:
        return {"recent_mixed_steps": 0, "margin": engine.latency.step_margin()}
    return {
        "recent_mixed_steps": len(errors),
        "measured_over_predicted": {"p50": errors[len(errors) // 2], "p90": errors[int(0.9 * len(errors))]},
        "margin": engine.latency.step_margin(),
    }


def _saturation_requests(settings: BenchSettings) -> list[BenchRequest]:
    return make_requests(settings.saturation_mix, settings.saturation_requests, math.inf, settings.seed, 256)


class _PhaseClock:
    """Adds the seconds since its last lap to `phases[name]` (where a bench run's time goes)."""

    def __init__(self, phases: dict[str, float]) -> None:
        self.phases = phases
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


def saturation(
    settings: BenchSettings,
    slo_engine: Engine,
    fcfs_engine: Engine,
    hf_model,
    eos: list[int],
    phases: dict,
    progress: Callable[[str], None] = lambda _step: None,
) -> dict:
    """Output tok/s with every request queued at t=0, systems interleaved on the same requests. `phases` gets the
    seconds each part took; `progress` is told as each part begins."""
    reqs = _saturation_requests(settings)
    no_slo = math.inf
    results: dict[str, dict] = {}

    def engine_run(engine: Engine) -> dict:
        engine.reset_prefix_cache()  # every pass serves the same prompts: none may find the last pass's
        records, wall = run_engine_trace(engine, reqs, None, None, 600)
        return summarize(records, wall, no_slo, no_slo)

    # Warm-up (first-touch pages of the KV pool, workspaces, allocator caches), untimed, for every system.
    clock = _PhaseClock(phases)
    progress("throughput: warm-up")
    warm = reqs[:8]
    for engine in (slo_engine, fcfs_engine):
        run_engine_trace(engine, warm, None, None, 120)
    measure_hf_generate(hf_model, warm[:1], eos)
    clock.lap("warm_up")
    passes: dict[str, list[dict]] = {"engine": [], "engine_fcfs": []}
    progress("throughput: engine")
    passes["engine"].append(engine_run(slo_engine))
    progress("throughput: FCFS engine")
    passes["engine_fcfs"].append(engine_run(fcfs_engine))
    clock.lap("engines")
    progress("throughput: transformers generate()")
    subset = reqs[: settings.hf_generate_requests]
    services, wall = measure_hf_generate(hf_model, subset, eos)
    results["hf_generate"] = summarize(replay_sequential(services, subset), wall, no_slo, no_slo)
    clock.lap("hf_generate")
    kv_tokens = settings.kv_cache_bytes // slo_engine.runner.layout.bytes_per_token()
    progress("throughput: transformers continuous batching")
    records, wall = run_hf_continuous_batching(hf_model, reqs, eos, 600, settings.max_batch_tokens, kv_tokens)
    results["hf_generate_batch"] = summarize(records, wall, no_slo, no_slo)
    clock.lap("hf_generate_batch")
    progress("throughput: FCFS engine, second pass")
    passes["engine_fcfs"].append(engine_run(fcfs_engine))
    progress("throughput: engine, second pass")
    passes["engine"].append(engine_run(slo_engine))
    clock.lap("engines")
    # Two passes each, one before and one after the baselines (A B .. B A): both engines see the machine in
    # both states, and the figure is their mean.
    for name, runs in passes.items():
        rates = [r["output_tok_s"] for r in runs]
        results[name] = {**runs[-1], "output_tok_s": statistics.mean(rates), "output_tok_s_passes": rates}
    return results


def goodput(
    settings: BenchSettings,
    slo_engine: Engine,
    fcfs_engine: Engine,
    hf_model,
    eos: list[int],
    phases: dict,
    progress: Callable[[str], None] = lambda _step: None,
) -> dict:
    """Capacity at SLO of the engine and of FCFS batching (probes interleaved), plus HF attainment curves.
    `phases` gets the seconds each part took (each system's capacity search apart); `progress` is told as each
    part (each probe) begins."""
    clock = _PhaseClock(phases)
    progress("capacity: SLO calibration")
    reqs = make_requests(settings.goodput_mix, settings.goodput_requests, 1.0, settings.seed + 1, 256)
    slo = calibrate_slo(fcfs_engine, reqs, settings)
    clock.lap("slo_calibration")
    # Start the search near what the machine could serve back to back (prefill + half-batched decode demand).
    mean_prompt = statistics.mean(len(r.prompt_ids) for r in reqs)
    median_prompt = sorted(len(r.prompt_ids) for r in reqs)[len(reqs) // 2]
    demand_s = slo.isolated_prefill_s * mean_prompt / median_prompt
    demand_s += statistics.mean(r.max_new_tokens for r in reqs) * slo.isolated_decode_s / 2
    start_rate = START_LOAD / demand_s
    probes: list[dict] = []
    systems = {"engine": slo_engine, "engine_fcfs": fcfs_engine}
    floor = start_rate / 2**settings.search_halvings
    searches = {
        name: SystemSearch(start_rate, settings.probes_per_system, min_rate=floor,
                           max_per_definition=settings.probes_per_definition)
        for name in systems
    }  # fmt: skip
    while True:  # A B A B: both systems see the machine in the same state
        pending = {name: search.next_rate() for name, search in searches.items()}
        if all(rate is None for rate in pending.values()):
            break
        for name, rate in pending.items():
            if rate is not None:
                progress(f"capacity: {'engine' if name == 'engine' else 'FCFS engine'} at {rate:.2f} req/s")
                searches[name].record(rate, _engine_probe(systems[name], settings, slo, probes, name)(rate))
                clock.lap(f"capacity_search_{name}")
    by_definition = {name: search.capacities() for name, search in searches.items()}
    main = "with_stalls" if settings.count_stalls else "mean_tpot"
    capacities = {name: caps[main] for name, caps in by_definition.items()}
    rates = sorted({p["rate_req_s"] for p in probes})
    if settings.hf_curve:
        progress("capacity: transformers generate() curve")
        traces = {rate: probe_requests(settings, rate) for rate in rates}
        # Every trace's lengths are a prefix of the longest one's (same seed): serve that one once, replay all.
        services, _ = measure_hf_generate(hf_model, max(traces.values(), key=len), eos)
        for rate, trace in traces.items():
            records = replay_sequential(services[: len(trace)], trace)
            wall = max(r.token_times_s[-1] for r in records) - trace[0].arrival_s
            probes.append(
                {
                    "system": "hf_generate",
                    "rate_req_s": rate,
                    **summarize(records, wall, slo.ttft_s, slo.tpot_s, settings.count_stalls),
                }
            )
    kv_tokens = settings.kv_cache_bytes // slo_engine.runner.layout.bytes_per_token()
    # Live continuous-batching runs are slow: spend them on the middle of the probed range.
    middle = sorted(rates, key=lambda r: abs(math.log(r / statistics.median(rates))))
    for rate in sorted(middle[: settings.hf_batch_rates]):
        progress(f"capacity: transformers continuous batching at {rate:.2f} req/s")
        trace = probe_requests(settings, rate)
        records, wall = run_hf_continuous_batching(
            hf_model, trace, eos, trace[-1].arrival_s + 120, settings.max_batch_tokens, kv_tokens
        )
        summary = summarize(records, wall, slo.ttft_s, slo.tpot_s, settings.count_stalls)
        probes.append({"system": "hf_generate_batch", "rate_req_s": rate, **summary})
    clock.lap("hf_curves")
    return {
        "slo": asdict(slo),
        "capacity_req_s": capacities,
        "capacity_req_s_by_definition": by_definition,
        "capacity_brackets": {name: search.brackets() for name, search in searches.items()},
        "ttft_prediction": ttft_prediction_of(probes, "engine"),
        "probes": probes,
    }


def ttft_prediction_of(probes: list[dict], system: str) -> dict:
    """The engine's predicted vs achieved TTFT over every admitted request of `system`'s probes."""
    pairs = [pair for p in probes if p["system"] == system for pair in p["ttft_prediction"].get("pairs_ms", [])]
    records = [RequestRecord(ttft_s=a / 1000, predicted_ttft_s=p / 1000) for p, a in pairs]
    return {k: v for k, v in ttft_prediction(records).items() if k != "pairs_ms"}


def expected_steps(settings: BenchSettings) -> int:
    """About how many parts `run_serving_bench` reports to `progress`: the throughput passes, the SLO calibration,
    a typical capacity search (two thirds of each system's probe bound), the transformers curves, the prefix cache
    and the compute limit."""
    probes = 2 * math.ceil(settings.probes_per_system * 2 / 3)
    return 7 + 1 + probes + int(settings.hf_curve) + settings.hf_batch_rates + 2


def run_serving_bench(
    settings: BenchSettings, plot_path=None, progress: Callable[[str], None] = lambda _step: None
) -> dict:
    """Run everything; returns the bench JSON object (machine info is added by the caller). `progress` is told as
    each part begins (`expected_steps` of them, about: a capacity search's probe count varies)."""
    from serving.model import load_model

    started = time.perf_counter()
    if settings.threads is None and not torch.cuda.is_available():
        settings.threads = 1  # shared CPU machines: one thread per system avoids OpenMP oversubscription
    if settings.threads:
        torch.set_num_threads(settings.threads)
    hf_model = load_model(settings.model).hf_model
    # A latency profile (and dtype choice) taken now, on this machine in its present state, for both engines: a
    # cached one may come from a quieter or a busier hour, and the online calibration would spend the first
    # probes correcting it.
    profile_dir = tempfile.TemporaryDirectory(prefix="swarm-bench-latency-")
    profile_path = str(Path(profile_dir.name) / "latency.json")
    slo_config, fcfs_config = settings.engine_config(True, profile_path), settings.engine_config(False, profile_path)
    with profile_dir, Engine(slo_config) as slo_engine, Engine(fcfs_config) as fcfs:
        # Baselines run in the engine's dtype (bf16 where the CPU has it natively): same arithmetic for all.
        hf_model = hf_model.to(device=slo_engine.device, dtype=slo_engine.dtype)
        eos = sorted(slo_engine.eos_token_ids) or [-1]
        phases = {"start": time.perf_counter() - started}
        sat_phases: dict[str, float] = {}
        sat = saturation(settings, slo_engine, fcfs, hf_model, eos, sat_phases, progress)
        phases["saturation"] = time.perf_counter() - started - sum(phases.values())
        good_phases: dict[str, float] = {}
        good = goodput(settings, slo_engine, fcfs, hf_model, eos, good_phases, progress)
        phases["goodput"] = time.perf_counter() - started - sum(phases.values())
        progress("prefix cache")
        prefix = prefix_cache_gain(slo_engine, settings.prefix_requests, settings.seed + 3)
        phases["prefix_cache"] = time.perf_counter() - started - sum(phases.values())
        mean_context = statistics.mean(len(r.prompt_ids) + r.max_new_tokens / 2 for r in _saturation_requests(settings))
        progress("compute limit")
        limit = compute_limit(hf_model, slo_engine.dtype, slo_engine.device, int(mean_context))
        phases["compute_limit"] = time.perf_counter() - started - sum(phases.values())
        dtype_choice = asdict(slo_engine.dtype_choice) if slo_engine.dtype_choice else None
        model_id, model_hash, device = slo_engine.model_id, slo_engine.model_hash, str(slo_engine.device)
        dtype = str(slo_engine.dtype).removeprefix("torch.")
        latency = slo_engine.latency
        latency_model = {
            "profiled_coefficients": latency.coefficients,
            "factors_at_end": latency.factors,
            "step_margin_at_end": latency.step_margin(),
        }
    ratios = _ratios(sat, good)
    ratios["prefix_cache_ttft_gain"] = prefix["prefix_cache_ttft_gain"]
    ratios["fraction_of_compute_limit"] = sat["engine"]["output_tok_s"] / limit["tokens_per_s"]
    config = asdict(settings)
    config.update(model_id=model_id, model_hash=model_hash, device=device, dtype=dtype, slo_targets=good["slo"])
    config["dtype_choice"] = dtype_choice
    results = {"saturation": sat, "goodput": good, "prefix_cache": prefix, "compute_limit": limit}
    results["latency_model"] = latency_model
    result = {
        "bench": "serve",
        "config": config,
        "results": {
            **results,
            "bench_wall_s": time.perf_counter() - started,
            "phase_wall_s": phases,
            "phase_parts_wall_s": {"saturation": sat_phases, "goodput": good_phases},
        },
        "ratios": ratios,
    }
    if plot_path is not None:
        from serving.bench_plot import plot_attainment

        plot_attainment(good["probes"], good["capacity_req_s"], plot_path)
    return result


def _ratios(sat: dict, good: dict) -> dict:
    engine = sat["engine"]["output_tok_s"]
    by_def = good["capacity_req_s_by_definition"]
    return {
        "throughput_vs_hf_generate": engine / sat["hf_generate"]["output_tok_s"],
        "throughput_vs_hf_generate_batch": engine / sat["hf_generate_batch"]["output_tok_s"],
        "throughput_vs_fcfs": engine / sat["engine_fcfs"]["output_tok_s"],
        "goodput_vs_fcfs": _over(by_def["engine"]["with_stalls"], by_def["engine_fcfs"]["with_stalls"]),
        "goodput_vs_fcfs_mean_tpot": _over(by_def["engine"]["mean_tpot"], by_def["engine_fcfs"]["mean_tpot"]),
        "ttft_prediction_error": good["ttft_prediction"].get("mean_abs_relative_error"),
    }


def _over(a: float, b: float) -> float | None:
    return a / b if b > 0 else None
