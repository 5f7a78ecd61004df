"""CLI command `swarm doctor`: runs `swarm.runtime.doctor`'s checks with the flags `swarm join` would get and
prints each with OK or a fix; exits 1 when a check fails. Parses flags and prints; the checks live in
`swarm.runtime.doctor`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

STYLE = {"ok": "[green]OK  [/]", "warn": "[yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}


def doctor(
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file over the preset.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override any field: section.field=value.")
    ] = None,
    listen: Annotated[list[str] | None, typer.Option(help="Multiaddr the node would listen on (repeatable).")] = None,
    peer: Annotated[list[str] | None, typer.Option(help="Bootstrap peer multiaddr to check (repeatable).")] = None,
    swarm_key: Annotated[Path | None, typer.Option(help="swarm.key of a private swarm.")] = None,
    swarm_id: Annotated[str | None, typer.Option(help="Swarm name (gossip topics).")] = None,
    http: Annotated[str | None, typer.Option(help="HOST:PORT the HTTP API would use (its port is checked).")] = None,
    averaging: Annotated[
        bool, typer.Option("--averaging/--no-averaging", help="Also start the training averaging stack once.")
    ] = True,
) -> None:
    """Check what keeps peers from finding each other: ports, listen addresses, bootstrap peers, swarm key, clock
    skew, the averaging stack. Prints OK or a fix for each; exits 1 if any check fails."""
    import trio

    from swarm.cli.node import fail
    from swarm.runtime.config import ConfigError, load_config
    from swarm.runtime.doctor import Doctor, failed

    flags: dict[str, Any] = {
        "network.listen": listen or None,
        "network.peers": peer or None,
        "network.swarm_key": swarm_key,
        "network.swarm_id": swarm_id,
        "node.http": http,
    }
    try:
        node_config = load_config(config, flags=flags, overrides=overrides or [])
    except (ConfigError, ValueError) as err:
        fail(str(err))
    console = Console(soft_wrap=True)
    findings = trio.run(lambda: Doctor(node_config, averaging=averaging).run())
    for f in findings:
        console.print(f"{STYLE[f.status]} [bold]{escape(f.check)}[/]: {escape(f.detail)}", highlight=False)
        if f.fix and f.status != "ok":
            console.print(f"{'':<5} fix: {escape(f.fix)}", highlight=False)
    bad = [f for f in findings if f.status == "fail"]
    if failed(findings):
        console.print(f"[bold red]{len(bad)} check(s) failed[/]: " + "; ".join(f.check for f in bad))
        raise typer.Exit(1)
    console.print("[green]every check passed[/]")


def register(app: typer.Typer) -> None:
    app.command()(doctor)
