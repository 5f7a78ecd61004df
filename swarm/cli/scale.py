"""CLI commands of the scale benches: `bench scale` (real local processes) and `bench sim` (the simulator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

SIM_SIZES = "10,100,1000,10000"


def bench_scale(
    nodes: Annotated[int, typer.Option(help="Real `swarm join` processes on 127.0.0.1.", min=8, max=64)] = 32,
    serving: Annotated[int, typer.Option(help="How many of them serve the tiny model.", min=4, max=16)] = 5,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results JSON here.")] = None,
) -> None:
    """Time to be known by 99%, gossip bytes and CPU per node, serving peers found: real nodes, real counters."""
    from swarm.bench.bench_scale import run_scale_bench
    from swarm.bench.benchio import BenchProgress, finish_bench, machine_info

    console = Console()
    with BenchProgress("scale bench", nodes + 2, console) as progress:
        result = run_scale_bench(num_nodes=nodes, num_serving=serving, progress=progress)
    result["machine"] = machine_info()
    finish_bench(result, json_path, console)


def bench_sim(
    nodes: Annotated[str, typer.Option(help="Comma-separated swarm sizes.")] = SIM_SIZES,
    real: Annotated[
        Path | None, typer.Option(help="JSON of `swarm bench scale` to compare the N=32 point with.")
    ] = Path("docs/results/scale_32.json"),
    seed: Annotated[int, typer.Option(help="Seed of the network, roles and requests.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the figures against N here.")] = None,
) -> None:
    """Simulate swarms of N nodes running the project's membership, gossip, routing and NoLoCo code."""
    from swarm.bench.benchio import BenchProgress, finish_bench, machine_info
    from swarm.sim.bench import STEPS_PER_SIZE, plot_sim, run_sim_bench

    try:
        sizes = [int(n) for n in nodes.split(",") if n.strip()]
    except ValueError:
        raise typer.BadParameter(f"--nodes must be comma-separated integers, got {nodes!r}") from None
    if not sizes or any(not 2 <= n <= 100_000 for n in sizes):
        raise typer.BadParameter(f"--nodes: each size must be in [2, 100000], got {nodes!r}")
    real_result = json.loads(real.read_text()) if real is not None and real.exists() else None
    console = Console()
    with BenchProgress("sim bench", STEPS_PER_SIZE * (len(sizes) + 1), console) as progress:
        result = run_sim_bench(sizes, real_result, seed=seed, progress=progress)
    result["machine"] = machine_info()
    if plot is not None:
        plot_sim(result, plot)
    finish_bench(result, json_path, console)


def register(bench_app: typer.Typer) -> None:
    bench_app.command("scale")(bench_scale)
    bench_app.command("sim")(bench_sim)
