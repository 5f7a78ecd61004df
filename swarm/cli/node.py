"""CLI commands of the node: `keygen`, `swarm-key`, `join`, `status`, `demo`, `bench comms`."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from protocols.errors import SwarmError, describe_error

err_console = Console(stderr=True, soft_wrap=True)  # an error stays on one line, however narrow the terminal

# Every `swarm join` flag that sets a config field, and the field it sets (a test checks each one resolves).
JOIN_FLAG_FIELDS = {
    "listen": "network.listen",
    "peer": "network.peers",
    "swarm_key": "network.swarm_key",
    "swarm_id": "network.swarm_id",
    "identity": "network.identity",
    "heartbeat_s": "network.heartbeat_s",
    "peer_timeout_s": "network.peer_timeout_s",
    "http": "node.http",
    "roles": "node.roles",
    "info_file": "node.info_file",
    "api_key_file": "node.api_key_file",
    "tls_cert": "node.tls_cert",
    "tls_key": "node.tls_key",
    "model": "serving.model",
    "device": "serving.device",
}


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def keygen(
    path: Annotated[Path, typer.Argument(help="Where to write the Ed25519 identity (mode 0600).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Create a node identity and print its PeerID (one line, nothing else)."""
    from comms.identity import generate_identity, peer_id_of, write_identity

    if path.exists() and not force:
        fail(f"{path} exists; pass --force to replace it (its PeerID would change)")
    key_pair = generate_identity()
    write_identity(path, key_pair)
    typer.echo(peer_id_of(key_pair))


def swarm_key(
    path: Annotated[Path, typer.Argument(help="Where to write the new swarm.key.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Create a pre-shared key for a private swarm (libp2p pnet `swarm.key` format)."""
    from comms.pnet import write_swarm_key

    if path.exists() and not force:
        fail(f"{path} exists; pass --force to replace it")
    write_swarm_key(path)
    typer.echo(str(path))


def join(
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file over the preset.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override any field: section.field=value.")
    ] = None,
    listen: Annotated[
        list[str] | None, typer.Option(help="Multiaddr to listen on (repeatable; port 0 allowed).")
    ] = None,
    peer: Annotated[
        list[str] | None, typer.Option(help="Bootstrap peer multiaddr with /p2p/<id> (repeatable).")
    ] = None,
    swarm_key: Annotated[Path | None, typer.Option(help="swarm.key of a private swarm.")] = None,
    swarm_id: Annotated[str | None, typer.Option(help="Swarm name (gossip topics).")] = None,
    identity: Annotated[Path | None, typer.Option(help="Identity file; created when missing.")] = None,
    heartbeat_s: Annotated[float | None, typer.Option(help="Announce period in seconds.")] = None,
    peer_timeout_s: Annotated[float | None, typer.Option(help="Drop silent peers after this many seconds.")] = None,
    http: Annotated[str | None, typer.Option(help="Serve the HTTP API on HOST:PORT.")] = None,
    roles: Annotated[str | None, typer.Option(help="Comma-separated roles: serve, train, rl.")] = None,
    info_file: Annotated[Path | None, typer.Option(help="Write peer id, addrs and HTTP URL here as JSON.")] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="HTTP API keys, one a line: callers send Authorization: Bearer <key>.")
    ] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate: serve the HTTP API over TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    model: Annotated[str | None, typer.Option(help="With --roles serve: 'default' or a local checkpoint dir.")] = None,
    device: Annotated[str | None, typer.Option(help="With --roles serve: auto, cpu, cuda, cuda:1...")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Join a swarm: listen, bootstrap from --peer, announce this node and keep its membership table."""
    import trio

    from swarm.cli.logs import setup_logging
    from swarm.runtime.config import ConfigError, load_config

    values: dict[str, Any] = {
        "listen": listen or None,
        "peer": peer or None,
        "swarm_key": swarm_key,
        "swarm_id": swarm_id,
        "identity": identity,
        "heartbeat_s": heartbeat_s,
        "peer_timeout_s": peer_timeout_s,
        "http": http,
        "roles": [r.strip() for r in roles.split(",") if r.strip()] if roles is not None else None,
        "info_file": info_file,
        "api_key_file": api_key_file,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "model": model,
        "device": device,
    }
    flags = {JOIN_FLAG_FIELDS[name]: value for name, value in values.items()}
    try:
        setup_logging(log_level)
        node_config = load_config(config, flags=flags, overrides=overrides or [])
        check_placement(node_config)
    except (ConfigError, ValueError) as err:
        fail(str(err))
    try:
        trio.run(_run_until_signal, node_config)
    except Exception as err:  # one readable line, never a traceback of exception groups
        fail_with(err)


def check_placement(node_config: Any) -> None:
    """Refuse, before anything starts, a device override the node lacks or a memory budget no device holds."""
    if not node_config.node.roles:
        return
    from swarm.runtime.hardware import detect_devices, device_specs
    from swarm.runtime.placement import place_node

    place_node(node_config, device_specs(detect_devices(import_torch=True)))


def fail_with(err: BaseException) -> None:
    """Exit with one line naming what failed: code 2 for bad settings, 1 for anything else (a bug's traceback
    goes to the DEBUG log)."""
    import logging

    from swarm.runtime.config import ConfigError

    leaves = _leaves(err)
    if all(isinstance(e, (SwarmError, OSError, ValueError)) for e in leaves):
        code = 2 if all(isinstance(e, (ConfigError, ValueError)) for e in leaves) else 1
        fail(describe_error(err), code=code)
    logging.getLogger("swarm").debug("unexpected error", exc_info=err)
    fail(f"unexpected {describe_error(err)} (run with --log-level DEBUG for the traceback)", code=1)


def _leaves(err: BaseException) -> list[BaseException]:
    if isinstance(err, BaseExceptionGroup):
        return [leaf for sub in err.exceptions for leaf in _leaves(sub)]
    return [err]


async def _run_until_signal(config: Any) -> None:
    import logging

    import trio

    from swarm.runtime.node import Node

    log = logging.getLogger("swarm")
    node = Node(config)
    # Signals are watched from the start: a SIGTERM during a long model load stops the node too.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)
            async for signum in signals:
                log.info("received %s: leaving the swarm", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    log.info("node stopped")


def status(
    http: Annotated[str, typer.Option("--http", help="URL of a node's HTTP API, e.g. http://127.0.0.1:8080.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the peers JSON instead of a table.")] = False,
    api_key_file: Annotated[
        Path | None, typer.Option(help="API key file of a node started with --api-key-file (its first key is sent).")
    ] = None,
    ca_cert: Annotated[Path | None, typer.Option(help="Trust this CA/certificate for an https:// node.")] = None,
) -> None:
    """Show the peers a node knows."""
    import ssl

    import httpx

    from swarm.cli.status_view import peers_table
    from swarm.web.http_guard import read_api_keys

    url = http.rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    headers: dict[str, str] = {}
    try:
        if api_key_file is not None:
            headers["Authorization"] = f"Bearer {read_api_keys(api_key_file)[0]}"
        verify = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert is not None else True
    except (ValueError, OSError) as err:
        fail(f"cannot use {ca_cert}: {err}" if isinstance(err, OSError) else str(err))
    try:
        response = httpx.get(f"{url}/v1/swarm/peers", timeout=5.0, headers=headers, verify=verify)
        response.raise_for_status()
    except httpx.HTTPError as err:
        fail(f"cannot read {url}/v1/swarm/peers: {err}", code=1)
    rows = response.json()
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        Console().print(peers_table(rows, title=f"peers known to {url}"))


def demo(
    nodes: Annotated[int, typer.Option(help="How many nodes train (and then share rollouts).", min=2, max=8)] = 3,
    timeout_s: Annotated[float, typer.Option(help="Give up (exit code 1) if not done by then.", min=5)] = 600.0,
    quick: Annotated[bool, typer.Option("--quick", help="The tiny model and fewer steps (for tests).")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary JSON here.")] = None,
    plot_path: Annotated[Path | None, typer.Option("--plot", help="PNG of the loss and reward curves.")] = None,
) -> None:
    """The mission on this machine: nodes join, train together, serve the result, share RL rollouts; a summary."""
    from swarm.bench.demo import run_demo

    raise typer.Exit(run_demo(nodes, timeout_s, quick=quick, json_path=json_path, plot_path=plot_path))


def bench_comms(
    quick: Annotated[bool, typer.Option("--quick", help="Small sizes (under 3 minutes on 2 cores).")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results JSON here.")] = None,
    num_peers: Annotated[int, typer.Option(help="Nodes in the gossip latency test.", min=2, max=16)] = 5,
) -> None:
    """libp2p stream vs raw TCP bulk transfer on loopback, and gossip propagation latency."""
    from comms.bench import progress_steps, run_comms_bench
    from swarm.bench.benchio import BenchProgress, finish_bench, machine_info

    console = Console()
    with BenchProgress("comms bench", progress_steps(quick, num_peers), console) as progress:
        result = run_comms_bench(quick=quick, num_peers=num_peers, progress=progress)
    result["machine"] = machine_info()
    finish_bench(result, json_path, console)


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command()(keygen)
    app.command("swarm-key")(swarm_key)
    app.command()(join)
    app.command()(status)
    app.command()(demo)
    bench_app.command("comms")(bench_comms)
