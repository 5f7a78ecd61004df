"""The `swarm` command line: the typer app and one module of commands per capability. Each command parses
flags, calls one function elsewhere and prints; nothing here is needed by a running node."""

from swarm.cli.commands import app, main

__all__ = ["app", "main"]
