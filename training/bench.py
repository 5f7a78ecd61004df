"""`swarm bench train`: data-parallel baseline vs DiLoCo, NoLoCo and streaming DiLoCo (int4), 4 peers each.

Every system runs as `world` separate processes on 127.0.0.1 with the same model, seeds, shards, batch and
number of inner steps; the figures (final eval loss, bytes per peer, wall time) are measured in this run and
reported as ratios to the baseline. This module knows nothing about the node: it spawns bench peers.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import TrainingConfig
from training.data import load_corpus

_ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("ddp", "diloco", "noloco", "streaming_int4")


def bench_configs(quick: bool) -> tuple[dict[str, TrainingConfig], int]:
    """Per system config and the number of inner steps; only the exchange differs between systems."""
    steps = 300 if quick else 800
    base = TrainingConfig(
        inner_lr=3e-3,
        warmup_steps=20,
        total_steps=steps,
        batch_size=8,
        seq_len=64,
        max_corpus_bytes=3_000_000,
        eval_batches=8,
        matchmaking_time_s=1.0,
        round_timeout_s=30.0,
        allreduce_timeout_s=30.0,
        target_group_size=4,
        min_group_size=4,
    )
    h = 100 if quick else 200
    return {
        "ddp": base,
        "diloco": base.model_copy(update={"outer_optimizer": "diloco", "inner_steps": h, "codec": "fp16"}),
        "noloco": base.model_copy(
            update={"outer_optimizer": "noloco", "inner_steps": h // 2, "codec": "fp16", "min_group_size": 2}
        ),
        "streaming_int4": base.model_copy(
            update={
                "outer_optimizer": "streaming",
                "inner_steps": h,
                "codec": "int4",
                "num_fragments": 4,
                "overlap_steps": 1,
            }
        ),
    }, steps


def machine_info() -> dict[str, Any]:
    mem = 0
    with contextlib.suppress(ValueError, OSError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory": mem,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def run_system(
    system: str, cfg: TrainingConfig, steps: int, tokens: np.ndarray, world: int, bandwidth_mbps: float | None
) -> dict[str, Any]:
    """Start `world` peers of one system, wait for them (bounded), reap them, aggregate their results."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{system}-") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "tokens.npy", tokens)
        spec = {
            "system": system,
            "world": world,
            "config": json.loads(cfg.model_dump_json()),
            "steps": steps,
            "eval_every": max(1, steps // 12),
            "workdir": str(workdir),
            "timeout_s": 120.0,
            "bandwidth_mbps": bandwidth_mbps,
        }
        (workdir / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}
        started = time.monotonic()
        procs = [
            subprocess.Popen([sys.executable, "-m", "training.bench_peer", str(workdir / "spec.json"), str(r)], env=env)
            for r in range(world)
        ]
        try:
            deadline = started + 600.0
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        wall = time.monotonic() - started
        failed = [r for r, p in enumerate(procs) if p.returncode != 0]
        if failed:
            raise RuntimeError(f"{system}: peers {failed} exited with an error")
        results = [json.loads((workdir / f"result-{r}.json").read_text()) for r in range(world)]
    return summarize(results, wall)


def summarize(results: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    steps = [s for s, _ in results[0]["eval_history"]]
    curve = [float(np.mean([r["eval_history"][i][1] for r in results])) for i in range(len(steps))]
    return {
        "final_eval_loss": float(np.mean([r["final_eval_loss"] for r in results])),
        "final_eval_loss_per_peer": [r["final_eval_loss"] for r in results],
        "bytes_sent_per_peer": float(np.mean([r["bytes_sent"] for r in results])),
        "bytes_received_per_peer": float(np.mean([r["bytes_received"] for r in results])),
        "bytes_counted": results[0]["bytes_counted"],
        "exchanges_ok": sum(r["exchanges_ok"] for r in results),
        "exchanges_failed": sum(r["exchanges_failed"] for r in results),
        "wall_s": wall_s,
        "train_wall_s": float(np.max([r["train_wall_s"] for r in results])),
        "eval_curve": {"steps": steps, "loss": curve},
    }


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    base = results["ddp"]
    out: dict[str, float] = {}
    for name in SYSTEMS[1:]:
        if name in results:
            r = results[name]
            out[f"{name}_loss_vs_ddp"] = r["final_eval_loss"] / base["final_eval_loss"]
            out[f"{name}_bytes_reduction"] = base["bytes_sent_per_peer"] / max(1.0, r["bytes_sent_per_peer"])
            out[f"{name}_wall_vs_ddp"] = r["wall_s"] / base["wall_s"]
    return out


def run_bench(
    *,
    quick: bool,
    world: int = 4,
    bandwidth_mbps: float | None = None,
    systems: tuple[str, ...] = SYSTEMS,
    on_system: Callable[[str, dict[str, Any] | None], None] | None = None,
) -> dict[str, Any]:
    """Run every system in one go and return the report (JSON-ready)."""
    configs, steps = bench_configs(quick)
    tokens = load_corpus(None, configs["ddp"].max_corpus_bytes).numpy().astype(np.uint8)
    results: dict[str, dict[str, Any]] = {}
    for name in systems:
        if on_system:
            on_system(name, None)
        results[name] = run_system(name, configs[name], steps, tokens, world, bandwidth_mbps)
        if on_system:
            on_system(name, results[name])
    return {
        "bench": "train",
        "config": {
            "quick": quick,
            "world": world,
            "steps": steps,
            "bandwidth_mbps": bandwidth_mbps,
            "systems": {k: json.loads(configs[k].model_dump_json()) for k in systems},
        },
        "machine": machine_info(),
        "results": results,
        "ratios": ratios(results) if "ddp" in results else {},
    }


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in report["results"].items():
        curve = res["eval_curve"]
        ax.plot(
            curve["steps"],
            curve["loss"],
            marker="o",
            ms=3,
            label=f"{name} ({res['bytes_sent_per_peer'] / 1e6:.2f} MB/peer)",
        )
    ax.set_xlabel("inner step")
    ax.set_ylabel("held-out eval loss (nats/byte)")
    ax.set_title(f"swarm bench train: {report['config']['world']} peers on 127.0.0.1")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
