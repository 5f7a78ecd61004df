"""`swarm bench coschedule`: serving and training on one node, naive versus arbitrated (see bench_coschedule)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def bench_coschedule(
    quick: Annotated[bool, typer.Option("--quick", help="Phases of >= 24 requests at half capacity: ~5 min.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result JSON here.")] = None,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="PNG of attainment and training steps/s.")] = None,
) -> None:
    """Serve only, train only, serve + train naive, serve + train arbitrated, and with a rollout batch."""
    from rich.console import Console

    from swarm.bench.bench_coschedule import BenchAborted, CoscheduleSettings, run_coschedule_bench
    from swarm.bench.benchio import BenchProgress, finish_bench, machine_info
    from swarm.cli.node import fail

    console = Console(stderr=True)
    try:
        with BenchProgress("coschedule bench", 9, console) as progress:
            result = run_coschedule_bench(CoscheduleSettings.for_size(quick), progress, plot_path)
    except BenchAborted as err:
        fail(str(err), code=1)
    result["machine"] = machine_info()
    finish_bench(result, json_path, Console())


def register(bench_app: typer.Typer) -> None:
    bench_app.command("coschedule")(bench_coschedule)
