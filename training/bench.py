"""`swarm bench train`: data-parallel baseline and a no-communication baseline vs DiLoCo, NoLoCo and streaming
DiLoCo (int4), 4 peers each.

Every system runs as `world` separate processes on 127.0.0.1 with the same model, seeds, shards, batch and
number of inner steps; the figures (final eval loss, bytes per peer, wall time) are measured in this run and
reported as ratios to the baseline. Progress is the loss a system took off the warm start as a fraction of what
data-parallel took off: `local_only` (each peer on its shard alone) says how much of it needs no exchange at all.
This module knows nothing about the node: it spawns bench peers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import ModelShape, TrainingConfig
from training.data import load_corpus

_ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("ddp", "local_only", "diloco", "noloco", "streaming_int4")
BASELINES = ("ddp", "local_only")  # no averager: nothing of theirs crosses hivemind


def bench_configs(quick: bool) -> tuple[dict[str, TrainingConfig], int]:
    """Per system config and the number of inner steps; only the exchange differs between systems."""
    steps = 192 if quick else 768  # multiples of DiLoCo's and NoLoCo's H: they end on an outer step
    # 133k parameters (the default shape): at the sockets its tensor parts outweigh what hivemind's matchmaking
    # and DHT requests add (75-120 KB per peer per system, whatever the size); at 41k parameters they did not
    shape = ModelShape()
    base = TrainingConfig(
        model=shape,
        inner_lr=3e-3,
        warmup_steps=20,
        total_steps=steps,
        batch_size=16,
        seq_len=64,
        max_corpus_bytes=3_000_000,
        eval_batches=32,
        matchmaking_time_s=3.0,  # groups are full at once; a peer that waits for the others re-declares less
        round_timeout_s=30.0,
        allreduce_timeout_s=30.0,
        target_group_size=4,
        min_group_size=4,
    )
    # Outer Nesterov momentum 0.5, not the paper's 0.9: a quick run has 3-12 rounds per value, too few for a 0.9
    # buffer to pay back its overshoot (in-process replay of this bench from its warm start: DiLoCo progress vs ddp
    # 0.70 at 0.7/0.9 against 0.94 at 0.7/0.5; streaming 0.83 against 0.86). Outer lr 0.8 for DiLoCo (0.95),
    # 0.9 for streaming DiLoCo, whose merge keeps none of the live weights (alpha 1; 0.88 against 0.86 at 0.7/0.5).
    diloco = {"outer_optimizer": "diloco", "inner_steps": 16, "codec": "int4", "outer_lr": 0.8, "outer_momentum": 0.5}
    noloco = {
        "outer_optimizer": "noloco",
        "inner_steps": 8,
        "codec": "fp16",
        "noloco_momentum": 0.5,  # 0.93 against 0.90 at 0.3 (replay)
        "min_group_size": 2,
        "target_group_size": 2,
        "matchmaking_time_s": 1.0,  # a pair is full at once: a shorter period only shortens the lookups' pauses
    }
    streaming = {
        "outer_optimizer": "streaming",
        "inner_steps": 56,
        "codec": "int4",
        "num_fragments": 2,
        "error_feedback": True,
        "outer_lr": 0.9,
        "outer_momentum": 0.5,
        "merge_alpha": 1.0,
    }
    return {
        "ddp": base,
        "local_only": base,
        "diloco": base.model_copy(update=diloco),
        "noloco": base.model_copy(update=noloco),
        "streaming_int4": base.model_copy(update={**streaming, "overlap_steps": 1}),
    }, steps


StepProgress = Callable[[int, int], None]  # (steps done, steps in all)
# The warm start is a checkpoint from the middle of a run, not an annealed model: its learning rate stays at the
# peak after the warm-up, and every system continues from it with the same warm-up and cosine decay (as the DiLoCo
# paper's workers continue a pretraining run). From a warm start annealed to 0.1x (eval loss 1.628), every system
# first re-warmed to the peak and lost ground (data-parallel to 1.686 after 24 steps) and data-parallel ended at
# 1.535; from this one (about 1.676) it ends near 1.50, and the no-communication baseline stays well short of it.
WARM_MIN_LR_RATIO = 1.0
WARM_PROGRESS_EVERY = 10  # optimizer steps between two progress reports


def warm_start(cfg: TrainingConfig, tokens: np.ndarray, steps: int, path: Path, on_step: StepProgress | None = None
               ) -> float:  # fmt: skip
    """Train one model alone for `steps` plain AdamW steps on the whole train split and save it: every system
    starts from it (as DiLoCo starts from a pretrained model). Returns its eval loss. Its learning rate stays at
    the peak after the warm-up (`WARM_MIN_LR_RATIO`): a checkpoint from the middle of a run, which the systems
    continue and anneal."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only spin against the peers' processes
    try:
        return _warm_start(cfg, tokens, steps, path, on_step or (lambda _done, _total: None))
    finally:
        torch.set_num_threads(threads)


def _warm_start(cfg: TrainingConfig, tokens: np.ndarray, steps: int, path: Path, on_step: StepProgress) -> float:
    from safetensors.torch import save_file

    from training.data import TokenData
    from training.trainer import TrainingPeer

    data = TokenData(torch.from_numpy(tokens.astype(np.int64)), cfg.eval_fraction, cfg.seq_len)
    warm_cfg = cfg.model_copy(update={"total_steps": steps, "seed": cfg.seed + 1, "min_lr_ratio": WARM_MIN_LR_RATIO})
    peer = TrainingPeer(warm_cfg, data, peer_id="warm-start", shard_index=0, num_shards=1)
    for i in range(steps):
        peer.inner.step(peer.next_batch())
        peer.status.step += 1
        if (i + 1) % WARM_PROGRESS_EVERY == 0 or i + 1 == steps:
            on_step(i + 1, steps)
    save_file({n: p.detach().contiguous() for n, p in peer.inner.model.named_parameters()}, str(path))
    return peer.evaluate()


WARM_CACHE = Path.home() / ".cache" / "swarm" / "bench-train"


def cached_warm_start(cfg: TrainingConfig, tokens: np.ndarray, steps: int, path: Path,
                      on_step: StepProgress | None = None) -> float:  # fmt: skip
    """`warm_start`, kept in WARM_CACHE under a hash of the config, the step count and the tokens: it is seeded and
    deterministic on CPU, and took 5-7 minutes of a quick run on a loaded 2-core machine. Returns its eval loss."""
    key = hashlib.sha256(f"{cfg.model_dump_json()}|{steps}|{WARM_MIN_LR_RATIO}|{torch.__version__}".encode())
    key.update(np.ascontiguousarray(tokens).tobytes())
    cached = WARM_CACHE / f"warm-{key.hexdigest()[:16]}"
    weights, meta = cached.with_suffix(".safetensors"), cached.with_suffix(".json")
    if weights.exists() and meta.exists():
        shutil.copyfile(weights, path)
        return float(json.loads(meta.read_text())["eval_loss"])
    loss = warm_start(cfg, tokens, steps, path, on_step)
    with contextlib.suppress(OSError):  # a cache that cannot be written costs the next run the warm start, no more
        WARM_CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, weights.with_suffix(".tmp"))
        weights.with_suffix(".tmp").rename(weights)
        meta.write_text(json.dumps({"eval_loss": loss, "steps": steps}))
    return loss


def machine_info() -> dict[str, Any]:
    mem = 0
    with contextlib.suppress(ValueError, OSError):
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "torch": torch.__version__,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


def run_systems(
    spec: dict[str, Any],
    tokens: np.ndarray,
    on_system: Callable[[str, dict[str, Any] | None], None] | None = None,
    timeout_s: float = 900.0,
    on_warm_step: StepProgress | None = None,
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Start `world` peer processes that run every system in turn; collect each system's results as they
    land; kill and reap the peers on any failure or timeout."""
    world = spec["world"]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "tokens.npy", tokens)
        warm_loss = None
        warm_path = workdir / "warm.safetensors"
        if spec["warm_start_steps"]:
            spec = {**spec, "warm_start": str(warm_path)}
        (workdir / "spec.json").write_text(json.dumps({**spec, "workdir": str(workdir)}))
        env = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "training.bench_peer", str(workdir)]
        procs = [subprocess.Popen([*cmd, str(r)], env=env) for r in range(world)]
        deadline = time.monotonic() + timeout_s
        try:
            if spec["warm_start_steps"]:  # while the peers import and load the corpus
                if on_system:
                    on_system("warm start", None)
                base = TrainingConfig.model_validate(spec["configs"][spec["systems"][0]])
                tmp_path = workdir / "warm.tmp.safetensors"
                warm_loss = cached_warm_start(base, tokens, spec["warm_start_steps"], tmp_path, on_warm_step)
                tmp_path.rename(warm_path)
            for system in spec["systems"]:
                if on_system:
                    on_system(system, None)
                files = [workdir / system / f"result-{r}.json" for r in range(world)]
                while not all(f.exists() for f in files):
                    if any(p.poll() not in (None, 0) for p in procs):
                        raise RuntimeError(f"{system}: a bench peer exited with an error")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"bench train did not finish in {timeout_s:.0f} s")
                    time.sleep(0.2)
                results[system] = summarize([json.loads(f.read_text()) for f in files])
                if on_system:
                    on_system(system, results[system])
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            _reap(procs)
    return results, warm_loss


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    steps = [s for s, _ in results[0]["eval_history"]]
    curve = [float(np.mean([r["eval_history"][i][1] for r in results])) for i in range(len(steps))]
    return {
        "final_eval_loss": float(np.mean([r["final_eval_loss"] for r in results])),
        "final_eval_loss_per_peer": [r["final_eval_loss"] for r in results],
        "final_eval_loss_local_weights": float(np.mean([r["final_eval_loss_local"] for r in results])),
        "bytes_sent_per_peer": float(np.mean([r["bytes_sent"] for r in results])),
        "bytes_received_per_peer": float(np.mean([r["bytes_received"] for r in results])),
        "bytes_counted": results[0]["bytes_counted"],
        "payload_bytes_sent_per_peer": float(np.mean([r["payload_bytes_sent"] for r in results])),
        "payload_bytes_received_per_peer": float(np.mean([r["payload_bytes_received"] for r in results])),
        "exchanges_ok": sum(r["exchanges_ok"] for r in results),
        "exchanges_failed": sum(r["exchanges_failed"] for r in results),
        "rounds_cut": sum(r.get("rounds_cut", 0) for r in results),
        "wall_s": float(np.max([r["wall_s"] for r in results])),
        "eval_curve": {"steps": steps, "loss": curve},
    }


def ratios(results: dict[str, dict[str, Any]], start_loss: float | None = None) -> dict[str, float]:
    """Each system against the baseline: `*_bytes_reduction` from the bytes counted at the sockets (what the
    network carried, handshakes, matchmaking and DHT requests included), `*_payload_bytes_reduction` from the
    bytes handed to them (tensor messages, or the ring's sends). With the warm start's eval loss,
    `*_progress_vs_ddp` = (start - final) / (start - ddp's final), for every system (1.0 for ddp itself)."""
    base = results["ddp"]
    out: dict[str, float] = {}
    for name in SYSTEMS[1:]:
        if name not in results:
            continue
        r = results[name]
        out[f"{name}_loss_vs_ddp"] = r["final_eval_loss"] / base["final_eval_loss"]
        out[f"{name}_wall_vs_ddp"] = r["wall_s"] / base["wall_s"]
        if name in BASELINES:  # sends nothing: no reduction to divide
            continue
        out[f"{name}_bytes_reduction"] = base["bytes_sent_per_peer"] / max(1.0, r["bytes_sent_per_peer"])
        out[f"{name}_payload_bytes_reduction"] = base["payload_bytes_sent_per_peer"] / max(
            1.0, r["payload_bytes_sent_per_peer"]
        )
    if start_loss is not None:
        gained = start_loss - base["final_eval_loss"]
        for name, r in results.items():
            if name != "ddp" and gained > 0:  # ddp that learned nothing leaves nothing to compare with
                out[f"{name}_progress_vs_ddp"] = (start_loss - r["final_eval_loss"]) / gained
    return out


def run_bench(
    *,
    quick: bool,
    world: int = 4,
    bandwidth_mbps: float | None = None,
    straggler: float | None = None,
    systems: tuple[str, ...] = SYSTEMS,
    on_system: Callable[[str, dict[str, Any] | None], None] | None = None,
    on_warm_step: StepProgress | None = None,
) -> dict[str, Any]:
    """Run every system in one go and return the report (JSON-ready). With `straggler` F, the last peer's
    inner steps take F times as long (it sleeps the difference) in every system."""
    configs, steps = bench_configs(quick)
    warm_steps = 1000
    tokens = load_corpus(None, configs["ddp"].max_corpus_bytes).numpy().astype(np.int32)  # EOS (257) ends documents
    spec = {
        "systems": list(systems),
        "world": world,
        "configs": {k: json.loads(configs[k].model_dump_json()) for k in systems},
        "steps": steps,
        "eval_every": max(1, steps // 8),
        "timeout_s": 120.0,
        "bandwidth_mbps": bandwidth_mbps,
        "straggler": straggler,
        "warm_start_steps": warm_steps,
    }
    # a guard against a hung peer, not a budget: on 2 shared cores under load a quick run took 40 min; the baselines
    # wait for the straggler at every step
    timeout_s = 2400.0 * max(1.0, straggler or 1.0)
    results, warm_loss = run_systems(spec, tokens, on_system, timeout_s, on_warm_step=on_warm_step)
    return {
        "bench": "train",
        "config": {
            "quick": quick,
            "world": world,
            "steps": steps,
            "bandwidth_mbps": bandwidth_mbps,
            "straggler": straggler,
            "warm_start_steps": warm_steps,
            "warm_start_min_lr_ratio": WARM_MIN_LR_RATIO,
            "warm_start_eval_loss": warm_loss,
            "systems": {k: json.loads(configs[k].model_dump_json()) for k in systems},
        },
        "machine": machine_info(),
        "results": results,
        "ratios": ratios(results, warm_loss) if "ddp" in results else {},
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
