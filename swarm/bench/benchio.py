"""What every `swarm bench` shares: the progress bar, the machine description, the JSON file, the printed table."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class BenchProgress:
    """A progress bar with elapsed time and ETA over a bench's steps. The bench calls it with a message as each
    step begins (the step before is then done); `advance_to(done, total)` moves a bar of finer units (the warm
    start's optimizer steps). A bench that reports more steps than expected grows the total: the bar never
    claims more than is done."""

    def __init__(self, title: str, total_steps: int, console: Console | None = None) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.fields[title]}[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task("starting", total=total_steps, title=title)
        self._detail = self._progress.add_task("", total=None, title="", visible=False)
        self._started = False

    def __enter__(self) -> BenchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        task = self._progress.tasks[self._task]
        if exc[0] is None and task.total is not None:
            self._progress.update(self._task, completed=task.total, description="done")
        self._progress.stop()

    def __call__(self, message: str) -> None:
        task = self._progress.tasks[self._task]
        if self._started:
            if task.total is not None and task.completed + 1 >= task.total:
                self._progress.update(self._task, total=task.completed + 2)
            self._progress.advance(self._task)
        self._started = True
        self._progress.update(self._task, description=message)
        self._progress.update(self._detail, visible=False)

    @property
    def steps(self) -> tuple[float, float | None]:
        """(steps done, steps expected)."""
        task = self._progress.tasks[self._task]
        return task.completed, task.total

    def advance_to(self, done: int, total: int, what: str = "") -> None:
        """Finer progress inside the current step: `done` of `total` units."""
        self._progress.update(self._detail, completed=done, total=total, description=what, visible=True)


def machine_info() -> dict[str, Any]:
    """cpu, cores, memory, torch version and device of this machine (torch only if installed)."""
    from swarm.runtime.hardware import cpu_name, logical_cores, system_memory_bytes

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": logical_cores(),
        "memory_bytes": system_memory_bytes(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()  # the widest vector ISA torch uses
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["torch"] = None
        info["device"] = "cpu"
    return info


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    elif isinstance(value, float):
        out.append((prefix, f"{value:.4g}"))
    else:
        out.append((prefix, str(value)))


def finish_bench(result: dict[str, Any], json_path: Path | None, console: Console | None = None) -> None:
    """Print the results and ratios as a table; write the whole result as JSON when asked."""
    console = console or Console()
    rows: list[tuple[str, str]] = []
    _flatten("", {"results": result.get("results", {}), "ratios": result.get("ratios", {})}, rows)
    table = Table(title=f"swarm bench {result.get('bench', '?')}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_path}")
