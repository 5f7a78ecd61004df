"""CLI command that makes the embedded default's shipped weights: `swarm model train-default`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "serving" / "weights"


def train_default(
    out: Annotated[Path, typer.Option(help="Where default.safetensors and default.json go.")] = DEFAULT_OUT,
    plot: Annotated[Path | None, typer.Option(help="PNG of the eval loss per round.")] = None,
    nodes: Annotated[int, typer.Option(min=1, max=16, help="Training nodes (each on its own shard).")] = 2,
    total_steps: Annotated[int, typer.Option(min=1, help="Inner steps per node.")] = 3000,
    inner_steps: Annotated[int, typer.Option(min=1, help="H: inner steps per DiLoCo round.")] = 100,
    max_minutes: Annotated[float, typer.Option(min=0.1, help="Stop and export the newest weights after this.")] = 90.0,
    workdir: Annotated[Path | None, typer.Option(help="Logs and checkpoints (default: a new temp dir).")] = None,
) -> None:
    """Train the embedded default's weights with a local swarm (DiLoCo on the bundled corpus) and export them."""
    from swarm.bench.train_default import train_default as run

    if inner_steps > total_steps:
        raise typer.BadParameter(f"--inner-steps {inner_steps} exceeds --total-steps {total_steps}")
    run(out, plot, nodes=nodes, total_steps=total_steps, inner_steps=inner_steps, max_minutes=max_minutes,
        workdir=workdir)  # fmt: skip


def register(model_app: typer.Typer) -> None:
    model_app.command("train-default")(train_default)
