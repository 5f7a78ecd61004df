"""`swarm demo`: the main job on the embedded defaults. Starts a local swarm of real `swarm join` processes on
127.0.0.1 (a chain: each node is given only the previous one), shows the live membership until every node knows
every other, prints a summary and shuts the swarm down cleanly.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from swarm.local_swarm import LocalPeer, stop_all

NODE_ARGS = ("--heartbeat-s", "1", "--peer-timeout-s", "5")


class DemoNode(LocalPeer):
    def __init__(self, index: int, workdir: Path, bootstrap: str | None) -> None:
        super().__init__(workdir, f"node-{index}", [*NODE_ARGS, *(["--peer", bootstrap] if bootstrap else [])])
        self.rows: list[dict[str, Any]] = []

    def poll(self) -> None:
        try:
            self.rows = self.peers(timeout_s=2)
        except httpx.HTTPError:
            self.rows = []


def _table(nodes: list[DemoNode], elapsed_s: float) -> Table:
    names = {n.info.get("peer_id"): n.name for n in nodes}
    table = Table(title=f"membership after {elapsed_s:.1f} s", title_justify="left")
    table.add_column("node")
    table.add_column("peer id")
    table.add_column("bootstrapped from")
    table.add_column("knows", justify="right")
    table.add_column("peers seen")
    for i, node in enumerate(nodes):
        seen = sorted(names.get(p["peer_id"], p["peer_id"][-6:]) for p in node.rows if not p.get("self"))
        done = len(node.rows) == len(nodes)
        table.add_row(
            node.name,
            node.info.get("peer_id", "?")[-10:],
            nodes[i - 1].name if i else "-",
            f"[{'green' if done else 'yellow'}]{len(node.rows)}/{len(nodes)}[/]",
            ", ".join(seen),
        )
    return table


def run_demo(num_nodes: int = 3, timeout_s: float = 60.0, console: Console | None = None) -> int:
    """Run the demo; returns the process exit code (0 when the swarm converged and shut down cleanly)."""
    console = console or Console()
    workdir = Path(tempfile.mkdtemp(prefix="swarm-demo-"))
    nodes: list[DemoNode] = []
    started = time.monotonic()
    try:
        console.print(f"[bold]Starting {num_nodes} nodes on 127.0.0.1[/] (logs in {workdir})")
        for i in range(num_nodes):
            nodes.append(DemoNode(i, workdir, nodes[-1].info["addrs"][0] if nodes else None))
            nodes[-1].wait_ready(max(started + timeout_s - time.monotonic(), 1.0))
            console.print(f"  {nodes[-1].name}: {nodes[-1].info['addrs'][0]}", soft_wrap=True, highlight=False)
        converged_at = _watch(nodes, started, timeout_s, console)
    except (RuntimeError, TimeoutError) as err:
        console.print(f"[bold red]demo failed:[/] {err}")
        stop_all(nodes)
        return 1
    codes = stop_all(nodes)
    if converged_at is None:
        console.print(f"[bold red]not converged within {timeout_s:.0f} s[/]; logs in {workdir}")
        return 1
    console.print()
    console.print(
        f"[bold green]converged[/]: every node knows all {num_nodes} in {converged_at:.1f} s "
        f"(chain bootstrap, each node given only the previous one)"
    )
    console.print(f"shutdown exit codes: {codes}")
    return 0 if all(code == 0 for code in codes) else 1


def _watch(nodes: list[DemoNode], started: float, timeout_s: float, console: Console) -> float | None:
    with Live(console=console, refresh_per_second=4) as live:
        while time.monotonic() - started < timeout_s:
            for node in nodes:
                node.poll()
            elapsed = time.monotonic() - started
            live.update(_table(nodes, elapsed))
            if all(len(n.rows) == len(nodes) for n in nodes):
                return elapsed
            time.sleep(0.25)
    return None
