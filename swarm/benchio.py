"""What every `swarm bench` shares: the machine description, the JSON file, the printed table."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def machine_info() -> dict[str, Any]:
    """cpu, cores, memory, torch version and device of this machine (torch only if installed)."""
    from swarm.hardware import cpu_name, logical_cores, system_memory_bytes

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
