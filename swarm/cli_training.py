"""CLI commands of training: `bench train`."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add the training commands to the CLI."""
