"""CLI commands of the serving engine: `generate`, `model save`, `bench serve`.

Each command is a thin shell over `serving`: it parses flags, calls one function, prints the result. The local
generation path lives in `generate_local` so that a remote path can sit beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from protocols.errors import SwarmError


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def generate_local(prompt: str, model: str, max_new_tokens: int, temperature: float, seed: int | None, device: str):
    """Run the engine in this process for one prompt; returns a `serving.request.GenerateResult`."""
    from serving.config import ServingConfig
    from serving.engine import Engine
    from serving.request import GenerateParams

    params = GenerateParams(prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    with Engine(ServingConfig(model=model, device=device)) as engine:
        return engine.generate(params)


def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text.")],
    model: Annotated[str, typer.Option(help='"default" (embedded) or a local HF checkpoint directory.')] = "default",
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (reproducible output).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1...")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print {text, token_ids, finish_reason, timings}.")] = False,
) -> None:
    """Generate text with the engine in this process."""
    try:
        result = generate_local(prompt, model, max_new_tokens, temperature, seed, device)
    except SwarmError as err:
        _fail(str(err))
    if json_out:
        out = {
            "text": result.text,
            "token_ids": result.token_ids,
            "finish_reason": result.finish_reason,
            "timings": result.timings,
        }
        typer.echo(json.dumps(out))
    else:
        typer.echo(result.text)


def model_save(
    name: Annotated[str, typer.Argument(help="Embedded model to export: default or tiny.")],
    directory: Annotated[Path, typer.Argument(help="Checkpoint directory to write.")],
    seed: Annotated[int, typer.Option(help="Weights seed (every node uses 0 unless configured).")] = 0,
) -> None:
    """Write an embedded model as a standard Hugging Face checkpoint directory."""
    from serving.model import EMBEDDED_SPECS, build_embedded_model, save_model

    if name not in EMBEDDED_SPECS:
        _fail(f"no embedded model {name!r} (have: {', '.join(EMBEDDED_SPECS)})")
    loaded = build_embedded_model(name, seed)
    save_model(loaded, directory)
    typer.echo(f"{directory} {loaded.model_hash}")


def bench_serve(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes: under 3 minutes on 2 CPU cores.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write SLO attainment vs rate (PNG) here.")] = None,
    model: Annotated[str, typer.Option(help='"default" (embedded) or a local HF checkpoint directory.')] = "default",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda...")] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads for every system (default: 1 on CPU, shared machines)")
    ] = None,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
) -> None:
    """Serving benchmark: the engine against transformers generate(), generate_batch() and FCFS batching."""
    from serving.bench import BenchSettings, run_serving_bench
    from swarm.benchio import finish_bench, machine_info

    settings = BenchSettings.for_size(quick=quick, model=model, device=device, threads=threads, seed=seed)
    result = run_serving_bench(settings, plot_path=plot)
    result["machine"] = machine_info()
    finish_bench(result, json_path)


def register(app: typer.Typer, bench_app: typer.Typer, model_app: typer.Typer) -> None:
    """Add the serving commands to the CLI."""
    app.command("generate")(generate)
    model_app.command("save")(model_save)
    bench_app.command("serve")(bench_serve)
