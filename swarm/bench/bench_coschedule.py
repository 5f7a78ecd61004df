"""`swarm bench coschedule`: serving and training on one node, naive versus arbitrated, in one run.

Phases on the embedded default model, the engine and the trainer both configured for every core (as a node is):
A serve only; B train only (the micro-stepped trainer process, always granted); C serve + train naive (a training
thread in the serving process taking whole steps, with nothing between them); D serve + train arbitrated (the
trainer process at the lowest OS priority, micro-steps granted by `swarm.runtime.arbiter`, stopped when an online
request arrives); E: D plus a rollout batch (offline requests with a deadline). Serving load: Poisson arrivals at a
share of the capacity measured in the same run on a warmed engine (up to 5 probes of >= 24 requests), the same
trace of at least 24 requests in A, C, D and E (a phase outlasts `phase_s` when the rate is low: fewer requests
cannot tell attainments apart). Ratios are of phases of this run. This module drives the phases; the decisions are
`serving`'s and `swarm.runtime.arbiter`'s.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from serving.bench import BenchSettings, calibrate_slo, probe_requests
from serving.bench_capacity import misses_to_fail
from serving.bench_drivers import run_engine_trace
from serving.bench_workload import LONG_PROMPT, make_requests, summarize
from serving.engine import Engine
from serving.request import GenerateParams
from swarm.runtime.arbiter import Arbiter, CoscheduleConfig, Gate
from swarm.runtime.micro_trainer import TrainerProcess, TrainerSpec
from training.config import TrainingConfig

TARGET = 0.9  # capacity = highest probed rate with this attainment
# Attainment = share of requests meeting their TTFT and mean TPOT targets (vLLM's and DistServe's goodput). The
# stricter reading that also counts stalls (more than one inter-token gap over the target, `bench serve`'s
# default) is reported beside it: on a shared 2-core machine it misses requests at any load, which would put the
# capacity far below what the engine serves.
ATTAINMENT = "slo_attainment_mean_tpot"
MIN_PHASE_REQUESTS = 24  # one request is 4% of a phase's attainment: the 0.97 bar needs that resolution
START_LOAD = 0.5  # first probe at this share of the back-to-back rate the isolated service time allows
MAX_PROBES = 5
STEP = 1.5  # probes step up or down by this factor until one passes and one fails
MAX_STEPS_DOWN = 2  # no probe below START_LOAD / STEP**2: a probe's length (>= 24 requests) grows as its rate falls
BRACKET = 1.3  # the search ends once the failed rate is within this factor of the passed one
WARMUP_REQUESTS = 8  # untimed, all at once, before the SLOs are calibrated and the capacity probed


class BenchAborted(RuntimeError):
    """The run cannot give meaningful figures (the message says why)."""


@dataclass
class CoscheduleSettings:
    quick: bool = True
    load_share: float = 0.5
    phase_s: float = 20.0
    probe_s: float = 8.0
    rollouts: int = 4
    rollout_tokens: int = 64
    rollout_deadline_share: float = 0.8  # of the phase
    train_s: float = 15.0  # phase B: training alone (steps/s and the eval losses D is compared with)
    eval_every: int = 5
    threads: int = 0  # 0: every core this process may use
    seed: int = 0

    @classmethod
    def for_size(cls, quick: bool) -> CoscheduleSettings:
        if quick:
            return cls(phase_s=30.0, train_s=10.0)
        return cls(quick=False, load_share=0.8, phase_s=40.0, probe_s=15.0, rollouts=8, train_s=30.0)


def _trace(rate: float, seconds: float, seed: int) -> list:
    """Poisson arrivals at `rate` for `seconds`, and at least MIN_PHASE_REQUESTS requests however slow the rate."""
    trace = make_requests(LONG_PROMPT, max(math.ceil(rate * seconds) + 16, MIN_PHASE_REQUESTS), rate, seed, 256)
    within = [r for r in trace if r.arrival_s <= seconds]
    return within if len(within) >= MIN_PHASE_REQUESTS else trace[:MIN_PHASE_REQUESTS]


def _serve(engine: Engine, trace: list, slo: Any) -> dict:
    engine.reset_prefix_cache()
    busy0, start = engine.busy_s, time.perf_counter()
    records, wall = run_engine_trace(engine, trace, slo.ttft_s, slo.tpot_s, trace[-1].arrival_s + 60)
    summary = summarize(records, wall, slo.ttft_s, slo.tpot_s, stalls=False)  # "slo_attainment" = ATTAINMENT
    summary["busy_fraction"] = (engine.busy_s - busy0) / max(time.perf_counter() - start, 1e-9)
    return summary


def _warm(engine: Engine, seed: int) -> None:
    """Untimed requests of the mix, all at once (first-touch KV pages, allocator caches, every step shape's first
    run), so no probe or phase pays for a cold engine."""
    run_engine_trace(engine, make_requests(LONG_PROMPT, WARMUP_REQUESTS, math.inf, seed, 256), None, None, 120)


def _capacity(engine: Engine, settings: BenchSettings, slo: Any, probe_s: float, log: list, say: Any = print) -> float:
    """Highest probed rate at which >= TARGET of the requests meet both SLOs. The first probe is at START_LOAD x
    the back-to-back rate of the isolated service time; then STEP x up or down until the bracket holds a pass and
    a fail, then its geometric midpoint, until it is within BRACKET or MAX_PROBES ran (a 1.5x bracket is within
    it after one midpoint: three probes where the start is near capacity, time left for phases of >= 24 requests).
    Every probe sends the same requests (only their arrival times scale), those of `swarm bench serve --quick`'s
    probes: at least 24, spanning at least `probe_s` of arrivals; one stops once it has missed enough to fail
    whatever the rest do."""
    service_s = slo.isolated_prefill_s + LONG_PROMPT.output_median * slo.isolated_decode_s
    start = rate = START_LOAD / service_s
    passed, failed = 0.0, math.inf
    for _ in range(MAX_PROBES):
        trace = probe_requests(settings, rate)
        engine.reset_prefix_cache()
        timeout_s = trace[-1].arrival_s + 2 * probe_s
        records, wall = run_engine_trace(engine, trace, slo.ttft_s, slo.tpot_s, timeout_s, misses_to_fail(len(trace)))
        summary = summarize(records, wall, slo.ttft_s, slo.tpot_s)
        log.append({"rate_req_s": rate, "requests": summary["requests"], "refused": summary["refused"],
                    "ttft_missed": sum(r.ttft_s is not None and r.ttft_s > slo.ttft_s for r in records),
                    "slo_attainment": summary[ATTAINMENT],
                    "slo_attainment_with_stalls": summary["slo_attainment_with_stalls"]})  # fmt: skip
        say(f"probe at {rate:.2f} req/s: attainment {summary[ATTAINMENT]:.2f} of {summary['requests']} requests, "
            f"{log[-1]['ttft_missed']} over the TTFT target")  # fmt: skip
        if summary[ATTAINMENT] >= TARGET:
            passed = max(passed, rate)
        else:
            failed = min(failed, rate)
        if passed and math.isfinite(failed):
            if failed / passed <= BRACKET:
                break
            rate = math.sqrt(passed * failed)
        elif passed:
            rate *= STEP
        elif rate * STEP**MAX_STEPS_DOWN <= start * 1.001:
            break  # none passed down to the floor (a machine busy with other work): reported as found
        else:
            rate /= STEP
    return passed or min(failed, rate) / 2


def _naive_training(cfg: TrainingConfig, stop: threading.Event, counter: list[int]) -> None:
    """Today's serve+train node: whole inner steps in a thread of the serving process."""
    from training.data import TokenData, load_corpus
    from training.inner import InnerLoop
    from training.model import load_train_model

    built = load_train_model(cfg.model)
    inner = InnerLoop(built.model, cfg, built.ignored_label())
    data = TokenData(load_corpus(cfg.data_path, cfg.max_corpus_bytes, built.tokenizer), cfg.eval_fraction, cfg.seq_len)
    shard = data.shard(0, 1)
    while not stop.is_set():
        inner.step(data.batch(shard, cfg.batch_size, cfg.seed, counter[0]))
        counter[0] += 1


def _train_phase(trainer: TrainerProcess, seconds: float, during: Any = None) -> tuple[float, Any]:
    """Steps/s of `trainer` over `during()` (or `seconds` of sleep), and what `during` returned."""
    s0, t0 = trainer.steps, time.perf_counter()
    out = during() if during is not None else time.sleep(seconds)
    return (trainer.steps - s0) / (time.perf_counter() - t0), out


def _rollouts(engine: Engine, s: CoscheduleSettings, trace: list) -> tuple[list[threading.Event], float]:
    """Submit the rollout batch (offline: priority -1, no targets, a deadline); the events fire as each ends."""
    deadline_ms = 1000 * s.rollout_deadline_share * max(trace[-1].arrival_s, 1.0)
    done: list[threading.Event] = []
    for i in range(s.rollouts):
        ev = threading.Event()
        prompt = trace[i % len(trace)].prompt_ids[:128]
        params = GenerateParams(prompt_token_ids=prompt, max_new_tokens=s.rollout_tokens, priority=-1,
                                deadline_ms=deadline_ms, ignore_eos=True, request_id=f"rollout-{i}")  # fmt: skip
        engine.submit(params, lambda e, ev=ev: ev.set() if not hasattr(e, "token_ids") else None)
        done.append(ev)
    return done, time.perf_counter() + deadline_ms / 1000


def run_coschedule_bench(s: CoscheduleSettings, progress: Any = None, plot_path: Any = None) -> dict:
    t0 = time.perf_counter()

    def say(message: str) -> None:
        if progress is not None:
            progress(message)
        if not sys.stderr.isatty():  # a log line where no progress bar is drawn (CI, redirected runs)
            print(f"[{time.perf_counter() - t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    threads = s.threads or len(os.sched_getaffinity(0))
    bench = BenchSettings.for_size(True, threads=threads, seed=s.seed, probe_arrival_s=s.probe_s)
    cfg = TrainingConfig(total_steps=100_000, warmup_steps=5, seed=s.seed)
    started = time.perf_counter()
    load_before = os.getloadavg()  # the machine's other work: on a shared machine it decides what is measured
    say("loading the model and calibrating SLOs")
    engine = Engine(bench.engine_config(slo=True))
    engine.start()
    trainers: list[TrainerProcess] = []
    try:
        _warm(engine, s.seed + 3)
        slo = calibrate_slo(engine, probe_requests(bench, 1.0), bench)
        tau_s = CoscheduleConfig().micro_step_share * slo.tpot_s
        gate_b, gate_d = Gate(), Gate()
        spec = TrainerSpec(cfg.model_dump_json(), tau_s, threads, eval_every=s.eval_every)
        say("training process: start-up and micro-step profile")
        trainer_b = TrainerProcess(spec, gate_b)
        trainers.append(trainer_b)
        trainer_b.start()
        report_b = trainer_b.wait_ready()  # profiled on otherwise idle cores, before anything is measured
        # D trains on the same micro-batches as B: same steps, same data, same loss. Given its micro-batch, it
        # starts at the lowest priority, so its start-up overlaps the probes without taking from them.
        trainer_d = TrainerProcess(TrainerSpec(**{**asdict(spec), "micro_batch": report_b.micro_batch}), gate_d)
        trainers.append(trainer_d)
        trainer_d.start()
        say(f"capacity probes (up to {MAX_PROBES}); targets TTFT {1000 * slo.ttft_s:.0f} ms, "
            f"TPOT {1000 * slo.tpot_s:.1f} ms")  # fmt: skip
        probes: list[dict] = []
        capacity = _capacity(engine, bench, slo, s.probe_s, probes, say)
        if not any(p["slo_attainment"] >= TARGET for p in probes):
            raise BenchAborted(
                f"no capacity probe down to {min(p['rate_req_s'] for p in probes):.2f} req/s met {TARGET:.0%} "
                f"attainment (1-minute load average {os.getloadavg()[0]:.1f} on {threads} cores): the machine is "
                "too busy for this bench's figures to mean anything"
            )
        rate = s.load_share * capacity
        trace = _trace(rate, s.phase_s, s.seed + 7)
        say(f"A: serve only ({len(trace)} requests at {rate:.2f} req/s)")
        phases: dict[str, dict] = {"A": _serve(engine, trace, slo)}
        say("B: train only")
        gate_b.grant(threads)
        phases["B"] = {"train_steps_per_s": _train_phase(trainer_b, s.train_s)[0]}
        report_b = trainer_b.stop()
        say("C: serve + train, naive")
        phases["C"] = _naive_phase(engine, trace, slo, cfg)
        trainer_d.wait_ready()
        say("D: serve + train, arbitrated")
        arbiter = Arbiter(engine.slack, gate_d, tau_s=tau_s, max_threads=threads, trainer_cpu_s=trainer_d.cpu_s)
        engine.on_online_arrival = arbiter.on_arrival
        arbiter.start()
        phases["D"] = _arbitrated_phase(engine, trace, slo, trainer_d, arbiter)
        say("E: arbitrated, plus a rollout batch with a deadline")
        phases["E"] = _rollout_phase(engine, trace, slo, trainer_d, arbiter, s)
        arbiter.stop()
        engine.on_online_arrival = None
        report_d = trainer_d.stop()
    finally:
        for trainer in trainers:
            trainer.stop()
        engine.stop()
    result = _result(s, bench, slo, tau_s, capacity, rate, probes, phases, report_b, report_d, started)
    result["results"]["load_average_1m"] = {"start": load_before[0], "end": os.getloadavg()[0]}
    if plot_path is not None:
        plot_coschedule(result, plot_path)
    return result


def _naive_phase(engine: Engine, trace: list, slo: Any, cfg: TrainingConfig) -> dict:
    stop, counter = threading.Event(), [0]
    thread = threading.Thread(target=_naive_training, args=(cfg, stop, counter), daemon=True)
    thread.start()
    while counter[0] == 0 and thread.is_alive():  # model built, first step done: training is running
        time.sleep(0.01)
    s0, t0 = counter[0], time.perf_counter()
    summary = _serve(engine, trace, slo)
    summary["train_steps_per_s"] = (counter[0] - s0) / (time.perf_counter() - t0)
    stop.set()
    thread.join(30)
    return summary


def _arbitrated_phase(engine: Engine, trace: list, slo: Any, trainer: TrainerProcess, arbiter: Arbiter) -> dict:
    arbiter.yields_s.clear()
    arbiter.yield_cpu_s.clear()
    rate, summary = _train_phase(trainer, 0, lambda: _serve(engine, trace, slo))
    summary["train_steps_per_s"] = rate
    summary["yield_latency_ms"] = {"p99": 1000 * arbiter.yield_p99_s(), "count": len(arbiter.yields_s),
                                   "max": 1000 * max(arbiter.yields_s, default=0.0),
                                   "trainer_cpu_after_revoke_p99": 1000 * arbiter.yield_p99_s(cpu=True)}  # fmt: skip
    summary["arrivals"] = arbiter.num_arrivals
    return summary


def _rollout_phase(engine: Engine, trace: list, slo: Any, trainer: TrainerProcess, arbiter: Arbiter, s: Any) -> dict:
    done, deadline = _rollouts(engine, s, trace)
    summary = _arbitrated_phase(engine, trace, slo, trainer, arbiter)
    met = [ev.wait(max(deadline - time.perf_counter(), 0.0)) for ev in done]
    summary["rollouts_done_by_deadline"] = sum(met)
    summary["rollouts"] = len(done)
    for i in range(len(done)):
        engine.cancel(f"rollout-{i}", "bench phase over")
    return summary


def _result(s, bench, slo, tau_s, capacity, rate, probes, phases, report_b, report_d, started) -> dict:
    att = {k: phases[k]["slo_attainment"] for k in "ACDE"}
    strict = {k: phases[k]["slo_attainment_with_stalls"] for k in "ACD"}
    idle_share = 1.0 - phases["A"]["busy_fraction"]
    common = sorted(set(report_b.evals) & set(report_d.evals))
    loss_step = common[-1] if common else None
    tpot_ms = 1000 * slo.tpot_s
    ratios = {
        "slo_attainment_naive": att["C"] / att["A"] if att["A"] else None,
        "slo_attainment_coscheduled": att["D"] / att["A"] if att["A"] else None,
        "train_harvest": phases["D"]["train_steps_per_s"] / phases["B"]["train_steps_per_s"]
        if phases["B"]["train_steps_per_s"]
        else None,
        "idle_share": idle_share,
        "yield_latency_p99_ms": phases["D"]["yield_latency_ms"]["p99"],
        "yield_latency_vs_tpot_target": phases["D"]["yield_latency_ms"]["p99"] / tpot_ms,
        "rollout_deadline_met": phases["E"]["rollouts_done_by_deadline"] / phases["E"]["rollouts"],
        "slo_attainment_with_rollouts": att["E"] / att["A"] if att["A"] else None,
        "slo_attainment_naive_with_stalls": strict["C"] / strict["A"] if strict["A"] else None,
        "slo_attainment_coscheduled_with_stalls": strict["D"] / strict["A"] if strict["A"] else None,
        "train_loss_ratio": report_d.evals[loss_step] / report_b.evals[loss_step] if loss_step else None,
    }
    config = {**asdict(s), "model": bench.model, "mix": LONG_PROMPT.name, "threads": bench.threads,
              "slo_ttft_ms": 1000 * slo.ttft_s, "slo_tpot_ms": tpot_ms, "tau_ms": 1000 * tau_s,
              "micro_batch": report_b.micro_batch, "micro_step_ms": {k: 1000 * v for k, v in
              report_b.micro_step_s.items()}, "trainer_priority": report_d.priority}  # fmt: skip
    results = {"capacity_req_s": capacity, "rate_req_s": rate, "probes": probes, "phases": phases,
               "eval_loss_step": loss_step, "eval_loss": {"B": report_b.evals, "D": report_d.evals},
               "bench_wall_s": time.perf_counter() - started}  # fmt: skip
    return {"bench": "coschedule", "config": config, "results": results, "ratios": ratios}


def plot_coschedule(result: dict, path: Any) -> None:
    """Attainment and training steps/s per phase, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = result["results"]["phases"]
    names = ["A", "B", "C", "D", "E"]
    labels = ["A serve", "B train", "C naive", "D arbitrated", "E D+rollouts"]
    att = [phases[n].get("slo_attainment", 0.0) for n in names]
    steps = [phases[n].get("train_steps_per_s", 0.0) for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(labels, att, color=["#4c72b0", "#cccccc", "#c44e52", "#55a868", "#8172b2"])
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("SLO attainment (share of requests)")
    ax1.set_title("serving")
    ax2.bar(labels, steps, color=["#cccccc", "#4c72b0", "#c44e52", "#55a868", "#8172b2"])
    ax2.set_ylabel("training steps / s")
    ax2.set_title("training")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30)
    r = {k: (f"{v:.2f}" if isinstance(v, float) else str(v)) for k, v in result["ratios"].items()}
    fig.suptitle(f"coschedule: attainment D/A {r['slo_attainment_coscheduled']}, C/A {r['slo_attainment_naive']}; "
                 f"training harvest {r['train_harvest']} (idle share {r['idle_share']})")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
