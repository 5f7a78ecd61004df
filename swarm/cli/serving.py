"""CLI commands of the serving engine: `generate`, `model save`, `bench serve`.

Each command is a thin shell over `serving`: it parses flags, calls one function, prints the result. The local
generation path lives in `generate_local` so that a remote path can sit beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from protocols.errors import SwarmError


def _fail(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


def generate_local(prompt: str, model: str, device: str, **sampling: Any):
    """Run the engine in this process for one prompt; returns a `serving.request.GenerateResult`."""
    from serving.config import ServingConfig
    from serving.engine import Engine
    from serving.request import GenerateParams

    params = GenerateParams(prompt=prompt, **sampling)
    with Engine(ServingConfig(model=model, device=device)) as engine:
        return engine.generate(params)


def generate_remote(prompt: str, peers: list[str], model: str, stream: bool, **sampling) -> Any:
    """Generate through the swarm with the Python client; streamed text goes to stdout as it arrives."""
    from swarm.cli.logs import setup_logging
    from swarm.client import Client

    setup_logging("ERROR")  # the client's libp2p host is chatty about peers it cannot reach
    with Client(peers=peers) as client:
        client.wait_for_servers(1, model=model, timeout_s=60)
        if not stream:
            return client.generate(prompt, model=model, **sampling)
        for delta in client.stream(prompt, model=model, **sampling):
            sys.stdout.write(delta.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return None


def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text.")],
    model: Annotated[str, typer.Option(help='"default" (embedded) or a local HF checkpoint directory.')] = "default",
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 64,
    temperature: Annotated[
        float | None, typer.Option(help="0 is greedy; unset: the model's recommended sampling, else greedy.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (reproducible output).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1... (in-process engine only)")] = "auto",
    peer: Annotated[
        list[str] | None, typer.Option(help="Generate through the swarm from this peer (repeatable) instead of here.")
    ] = None,
    stream: Annotated[bool, typer.Option("--stream", help="With --peer: print tokens as they arrive.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print {text, token_ids, finish_reason, timings}.")] = False,
) -> None:
    """Generate text: with the engine in this process, or through the swarm with --peer."""
    if stream and not peer:
        _fail("--stream needs --peer (the in-process engine prints the whole answer)")
    if stream and json_out:
        _fail("--stream and --json do not go together")
    from serving.model import recommended_sampling

    # The model's recommendation (its generation config) unless the caller chose a temperature.
    sampling: dict[str, Any] = recommended_sampling(model) if temperature is None else {"temperature": temperature}
    sampling.update(max_new_tokens=max_new_tokens, seed=seed)
    try:
        if peer:
            result = generate_remote(prompt, peer, model, stream, **sampling)
            if result is None:
                return
        else:
            result = generate_local(prompt, model, device, **sampling)
    except SwarmError as err:
        _fail(str(err))
    if json_out:
        out = {
            "text": result.text,
            "token_ids": result.token_ids,
            "finish_reason": result.finish_reason,
            "timings": result.timings,
        }
        if peer:
            out["peers"] = result.peers
        typer.echo(json.dumps(out))
    else:
        typer.echo(result.text)


def model_save(
    name: Annotated[str, typer.Argument(help="Embedded model to export: default or tiny.")],
    directory: Annotated[Path, typer.Argument(help="Checkpoint directory to write.")],
    seed: Annotated[int, typer.Option(help="Weights seed (every node uses 0 unless configured).")] = 0,
    family: Annotated[
        str, typer.Option(help="llama (the embedded model), or mistral, qwen2, qwen3: that family, same shape.")
    ] = "llama",
) -> None:
    """Write an embedded model as a standard Hugging Face checkpoint directory (a start for `training.model`)."""
    from serving.model import EMBEDDED_SPECS, SUPPORTED_MODEL_TYPES, build_embedded_model, save_model

    if name not in EMBEDDED_SPECS:
        _fail(f"no embedded model {name!r} (have: {', '.join(EMBEDDED_SPECS)})")
    if family not in SUPPORTED_MODEL_TYPES:
        _fail(f"--family: no family {family!r} (have: {', '.join(SUPPORTED_MODEL_TYPES)})")
    loaded = build_embedded_model(name, seed, family)
    save_model(loaded, directory)
    typer.echo(f"{directory} {loaded.model_hash}")


def bench_serve(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes: about 5 minutes on 2 quiet CPU cores.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result JSON here.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write SLO attainment vs rate (PNG) here.")] = None,
    model: Annotated[
        str, typer.Option(help='"default-random" (the default network, seeded weights) or a checkpoint directory.')
    ] = "default-random",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda...")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 (every system runs in it)")] = "auto",
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads for every system (default: 1 on CPU, shared machines)")
    ] = None,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    swarm: Annotated[
        int, typer.Option(help="Routing bench over this many serving processes (one throttled 3x); 0: one node.")
    ] = 0,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="Bench this OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) instead of an engine"
            " here; --model names the model it serves."
        ),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="With --base-url: bearer token of the endpoint.")] = None,
    llama_cpp_server: Annotated[
        str | None,
        typer.Option(
            help="Also bench this llama.cpp server (its /v1 URL, serving the same model as GGUF) held to"
            " the engine's SLOs: throughput_vs_llama_cpp, goodput_vs_llama_cpp."
        ),
    ] = None,
    refusing_peers: Annotated[
        bool,
        typer.Option(
            "--refusing-peers",
            help="With --swarm: peers refuse requests they predict they would serve late (serving.slo_refuse);"
            " by default they queue every request, so the routing decision alone decides.",
        ),
    ] = False,
) -> None:
    """Serving benchmark: the engine against transformers generate(), generate_batch() and FCFS batching; with
    --swarm N, predicted-TTFT routing against random routing and least outstanding requests across N serving peers;
    with --base-url, any OpenAI-compatible endpoint."""
    from serving.bench import BenchSettings
    from swarm.bench.benchio import BenchProgress, finish_bench, machine_info

    if refusing_peers and not swarm:
        _fail("--refusing-peers applies to the routing bench: add --swarm N")
    if swarm:
        from rich.console import Console

        from swarm.bench.bench_swarm import POLICIES, run_swarm_bench

        if swarm < 2:
            _fail("--swarm needs at least 2 peers")
        console = Console()
        # Its steps: one peer's capacity, starting the peers, a warm-up pass, then each routing policy's passes.
        steps = 3 + len(POLICIES) * (2 if quick else 3)
        with BenchProgress("routing bench", steps, console) as progress:
            result = run_swarm_bench(
                quick=quick, num_peers=swarm, model=model, refusing_peers=refusing_peers, progress=progress
            )
        result["machine"] = machine_info()
        finish_bench(result, json_path, console)
        return

    if base_url:
        from swarm.bench.bench_http import HttpServer, run_http_bench

        settings = BenchSettings.for_size(quick=quick, seed=seed)
        result = run_http_bench(HttpServer(base_url, model, api_key), settings)
        _print_and_write(result, json_path, None)
        return
    settings = BenchSettings.for_size(quick=quick, model=model, device=device, dtype=dtype, threads=threads, seed=seed)
    _bench_one_node(settings, json_path, plot, llama_cpp_server)


def _bench_one_node(settings, json_path: Path | None, plot: Path | None, llama_cpp_server: str | None) -> None:
    """The single-node serving bench (and llama.cpp's server beside it, when given): run, print, write."""
    from serving.bench import Slo, expected_steps, run_serving_bench
    from swarm.bench.bench_http import add_comparison, run_http_bench
    from swarm.bench.bench_http import llama_cpp_server as llama_cpp_endpoint
    from swarm.bench.benchio import BenchProgress

    with BenchProgress("serving bench", expected_steps(settings)) as progress:
        result = run_serving_bench(settings, plot_path=plot, progress=progress)
    if llama_cpp_server:
        from serving.model import load_model

        eos = load_model(settings.model).tokenizer.eos_token_id
        server, kind = llama_cpp_endpoint(llama_cpp_server, [] if eos is None else [eos])
        result["config"]["llama_cpp_server_kind"] = kind
        slo = Slo(**result["results"]["goodput"]["slo"])
        other = run_http_bench(server, settings, "llama_cpp", slo)
        add_comparison(result, other, "llama_cpp")
    else:
        result["ratios"].update(throughput_vs_llama_cpp=None, goodput_vs_llama_cpp=None)
        result["config"]["llama_cpp_server"] = "not measured: no --llama-cpp-server given"
    _print_and_write(result, json_path, plot)


def _print_and_write(result: dict, json_path: Path | None, plot: Path | None) -> None:
    from rich.console import Console

    from serving.bench_report import summary_table
    from swarm.bench.benchio import machine_info

    machine = machine_info()
    machine.setdefault("memory", f"{machine.get('memory_bytes', 0) / 2**30:.1f} GiB")
    result["machine"] = machine
    console = Console()
    console.print(summary_table(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_path}")
    if plot is not None:
        console.print(f"wrote {plot}")


def register(app: typer.Typer, bench_app: typer.Typer, model_app: typer.Typer) -> None:
    """Add the serving commands to the CLI."""
    app.command("generate")(generate)
    model_app.command("save")(model_save)
    bench_app.command("serve")(bench_serve)
