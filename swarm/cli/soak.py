"""CLI command of the soak bench: `bench soak`. It parses flags, shows progress with an ETA and writes the report;
the bench itself lives in `swarm.bench.bench_soak`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated

import typer


def bench_soak(
    quick: Annotated[
        bool, typer.Option("--quick", help="2.5 minutes of load (under 6 minutes in all on 2 cores).")
    ] = False,
    minutes: Annotated[
        float | None, typer.Option(help="Minutes of load (default 10, or 2.5 with --quick).", min=0.1)
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results JSON here.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the kills, their moments and the prompts.")] = 0,
    garbage_protocol: Annotated[
        list[str] | None,
        typer.Option(
            help="Protocol the garbage-writing peer writes on (repeatable; default: every one a node may speak)."
        ),
    ] = None,
    no_garbage: Annotated[bool, typer.Option("--no-garbage", help="Run without the garbage-writing peer.")] = False,
    no_kills: Annotated[bool, typer.Option("--no-kills", help="Never kill a node.")] = False,
    logs: Annotated[Path | None, typer.Option(help="Keep every node's log in this directory.")] = None,
) -> None:
    """Serve and train nodes under steady client load, with kill -9 and restart of random nodes and a peer that
    writes garbage: lost and duplicated tokens, failed requests by code, training rounds, survivors' memory."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from swarm.bench.bench_soak import SoakSettings, run_soak
    from swarm.bench.benchio import finish_bench, machine_info

    _quiet_libraries()
    settings = SoakSettings.preset(quick, minutes, seed)
    if no_garbage:
        settings.garbage_protocols = ()
    elif garbage_protocol:
        settings.garbage_protocols = tuple(garbage_protocol)
    settings.kills = not no_kills
    settings.logs_dir = logs
    console = Console()
    columns = (
        TextColumn("soak"),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("starting", total=1.0)
        result = run_soak(settings, lambda done, line: bar.update(task, completed=done, description=line))
    result["machine"] = machine_info()
    table = copy.deepcopy(result)  # the table shows counts and ends; the JSON keeps every failure and sample
    table["results"]["failed_requests"] = len(table["results"]["failed_requests"])
    for series in table["results"]["memory"].values():
        mib = series.pop("rss_mib")
        series["rss_mib_first_last"] = [mib[0][1], mib[-1][1]] if mib else []
    finish_bench(table, None, console)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_path}")


def _quiet_libraries() -> None:
    """The bench's own client and garbage peer make libp2p log every refused stream and dead dial: expected
    here, and counted in the report, so only our warnings reach the terminal beside the progress bar."""
    import logging

    from swarm.cli.logs import NOISY_LOGGERS, setup_logging

    setup_logging("WARNING")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def register(bench_app: typer.Typer) -> None:
    bench_app.command("soak")(bench_soak)
