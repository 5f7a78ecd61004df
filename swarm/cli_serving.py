"""CLI commands of the serving engine: `generate`, `model save`, `bench serve`."""

from __future__ import annotations

import typer


def register(app: typer.Typer, bench_app: typer.Typer, model_app: typer.Typer) -> None:
    """Add the serving commands to the CLI."""
