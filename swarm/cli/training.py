"""CLI commands of training: `bench train`.

It only parses flags, shows progress and writes the report; the bench itself lives in `training.bench`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer


def _table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="swarm bench train (ratios vs the data-parallel baseline, same run)")
    cols = ("system", "final eval loss", "loss vs ddp", "progress vs ddp", "MB sent/peer", "bytes reduction", "wall s")
    for col in cols:
        table.add_column(col, justify="right")
    ratios = report["ratios"]
    for name, res in report["results"].items():
        reduction = ratios.get(f"{name}_bytes_reduction")
        table.add_row(
            name,
            f"{res['final_eval_loss']:.4f}",
            "1.000" if name == "ddp" else f"{ratios.get(f'{name}_loss_vs_ddp', float('nan')):.3f}",
            "1.000" if name == "ddp" else f"{ratios.get(f'{name}_progress_vs_ddp', float('nan')):.3f}",
            f"{res['bytes_sent_per_peer'] / 1e6:.2f}",
            "1" if name == "ddp" else ("-" if reduction is None else f"{reduction:.0f}x"),
            f"{res['wall_s']:.1f}",
        )
    return table


def bench_train(
    quick: bool = typer.Option(False, "--quick", help="Small size (under 3 minutes on 2 CPU cores)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the report as JSON here."),
    plot_path: Path | None = typer.Option(None, "--plot", help="Write the eval-loss curves (PNG) here."),
    bandwidth_mbps: float | None = typer.Option(
        None, "--bandwidth-mbps", min=0.001, help="Shape every peer's uplink to this many Mbit/s."
    ),
    peers: int = typer.Option(4, "--peers", min=2, max=16, help="Peers (processes) per system."),
    straggler: float | None = typer.Option(
        None, "--straggler", min=1.0, max=100.0, help="Stretch one peer's inner steps this many times (a slow device)."
    ),
) -> None:
    """Data-parallel and no-communication baselines vs DiLoCo, NoLoCo and streaming DiLoCo (int4), N processes each."""
    from rich.console import Console

    from swarm.bench.benchio import BenchProgress
    from training.bench import SYSTEMS, plot_curves, run_bench

    console = Console()
    started = time.monotonic()
    with BenchProgress("train bench", 1 + len(SYSTEMS), console) as progress:  # the warm start, then each system

        def on_system(name: str, result: dict[str, Any] | None) -> None:
            if result is None:
                progress(name)
            else:
                console.print(
                    f"{name}: eval loss {result['final_eval_loss']:.4f} in {result['wall_s']:.1f} s "
                    f"(bench at {time.monotonic() - started:.0f} s)"
                )

        def on_warm_step(done: int, total: int) -> None:
            progress.advance_to(done, total, "optimizer steps")

        report = run_bench(quick=quick, world=peers, bandwidth_mbps=bandwidth_mbps, straggler=straggler,
                           on_system=on_system, on_warm_step=on_warm_step)  # fmt: skip
    console.print(_table(report))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {json_path}")
    if plot_path is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(report, plot_path)
        console.print(f"wrote {plot_path}")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add the training commands to the CLI."""
    bench_app.command("train")(bench_train)
