"""`swarm model train-default`: how the embedded default's shipped weights are made.

A training swarm of real `swarm join --roles train` nodes on this machine (swarm.bench.train_swarm) trains
`default-random` (the default network from its seed) with DiLoCo on the bundled corpus (the interpreter's stdlib
source, documents ended by EOS), each node on its own half of it. The first node's newest checkpoint, cast to fp16,
becomes `OUT/default.safetensors`; `OUT/default.json` holds the recipe and the eval loss per round, and the curve
goes to a PNG. Knows the recipe and the files it writes; the training happens inside the nodes.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file

from swarm.bench.train_swarm import TrainSwarm

WEIGHTS_FILE = "default.safetensors"
START_TIMEOUT_S = 600.0  # a node tokenises the whole corpus before it trains: slow on a busy machine


def recipe(nodes: int, total_steps: int, inner_steps: int) -> dict[str, Any]:
    """The `--set` settings every node gets (plus its own `training.data_shard`)."""
    return {
        "training.model": "default-random",
        "training.precision": "bf16",
        "training.seq_len": 256,
        "training.batch_size": 8,
        "training.inner_steps": inner_steps,
        "training.total_steps": total_steps,
        "training.inner_lr": 3e-3,
        "training.warmup_steps": 30,
        "training.max_corpus_bytes": 16_000_000,
        "training.eval_fraction": 0.02,
        "training.eval_batches": 8,
        "training.data_shards": nodes,
        "training.matchmaking_time_s": 5.0,
        "training.allreduce_timeout_s": 120.0,
        "training.round_timeout_s": 300.0,
        "training.keep_checkpoints": 1,
        "training.start_peers": nodes - 1,
        "training.start_wait_s": 600.0,
    }


def export_weights(checkpoint: Path, out: Path, metadata: dict[str, str]) -> Path:
    """The checkpoint's model weights in fp16 (the package ships these), with `metadata` in the header."""
    weights = load_file(str(checkpoint / "model.safetensors"))
    half = {name: t.to(torch.float16).contiguous() for name, t in sorted(weights.items())}
    out.mkdir(parents=True, exist_ok=True)
    path = out / WEIGHTS_FILE
    save_file(half, str(path), metadata=metadata)
    return path


def plot_curve(curve: dict[int, float], inner_steps: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r * inner_steps for r in curve], list(curve.values()), marker="o")
    ax.set_xlabel("inner step (per node)")
    ax.set_ylabel("eval loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console)  # fmt: skip


def _describe(swarm: TrainSwarm) -> str:
    parts = []
    for k, p in enumerate(swarm.progress):
        ev = f"{p.eval_loss:.3f}" if math.isfinite(p.eval_loss) else "-"
        loss = f"{p.loss:.3f}" if math.isfinite(p.loss) else "-"
        parts.append(f"n{k} r{p.round} loss {loss} eval {ev}")
    return " | ".join(parts)


def _train(swarm: TrainSwarm, deadline: float, console: Console) -> bool:
    """Start the nodes and follow them until they finish (True) or `deadline` passes (False)."""
    swarm.start_all(START_TIMEOUT_S)
    with _progress(console) as progress:
        task = progress.add_task("training", total=swarm.total_steps)
        while time.monotonic() < deadline:
            swarm.poll()
            progress.update(task, completed=min(p.step for p in swarm.progress), description=_describe(swarm))
            if swarm.finished():
                return True
            time.sleep(2.0)
    return False


def train_default(
    out: Path,
    plot: Path | None,
    *,
    nodes: int,
    total_steps: int,
    inner_steps: int,
    max_minutes: float,
    workdir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the recipe; returns the report also written to `out/default.json`."""
    console = console or Console()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="swarm-train-default-"))
    workdir.mkdir(parents=True, exist_ok=True)
    settings = recipe(nodes, total_steps, inner_steps)
    swarm = TrainSwarm(workdir, nodes, settings, per_node={k: {"training.data_shard": k} for k in range(nodes)})
    console.print(f"[bold]Training the embedded default[/] with {nodes} nodes (logs and checkpoints in {workdir})")
    started = time.monotonic()
    try:
        finished = _train(swarm, started + max_minutes * 60, console)
    finally:
        codes = swarm.stop()  # on SIGTERM each node checkpoints the step it reached
    wall_s = time.monotonic() - started
    checkpoint = swarm.newest_checkpoint(0)
    curve = swarm.eval_curve()
    step = min(p.step for p in swarm.progress)
    report = {
        "recipe": settings,
        "nodes": nodes,
        "finished": finished,
        "steps_per_node": step,
        "tokens_seen": step * nodes * settings["training.batch_size"] * settings["training.seq_len"],
        "wall_s": round(wall_s, 1),
        "eval_loss_by_round": {str(r): round(v, 4) for r, v in curve.items()},
        "checkpoint": checkpoint.name,
        "exit_codes": codes,
    }
    meta = {"recipe": json.dumps(settings, sort_keys=True), "steps_per_node": str(step), "nodes": str(nodes)}
    path = export_weights(checkpoint, out, meta)
    (out / "default.json").write_text(json.dumps(report, indent=2) + "\n")
    if plot is not None and curve:
        plot_curve(curve, inner_steps, plot, f"embedded default: {nodes} nodes, DiLoCo, stdlib source")
    console.print(f"weights: {path} ({path.stat().st_size / 1e6:.1f} MB); eval loss by round: "
                  f"{', '.join(f'{v:.3f}' for v in curve.values())}")  # fmt: skip
    if not finished:
        console.print(f"[yellow]stopped by --max-minutes at step {step} of {total_steps}[/]")
    return report
