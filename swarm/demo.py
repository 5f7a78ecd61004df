"""`swarm demo`: the main job on the embedded defaults. Starts a local swarm of real `swarm join` processes on
127.0.0.1 (a chain: each node is given only the previous one), shows the live membership until every node knows
every other, prints a summary and shuts the swarm down cleanly.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

NODE_ARGS = ("--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0", "--heartbeat-s", "1", "--peer-timeout-s", "5")


class DemoNode:
    def __init__(self, index: int, workdir: Path, bootstrap: str | None) -> None:
        self.name = f"node-{index}"
        self.info_path = workdir / f"{self.name}.json"
        self.log_path = workdir / f"{self.name}.log"
        args = [sys.executable, "-m", "swarm", "join", *NODE_ARGS, "--info-file", str(self.info_path)]
        if bootstrap:
            args += ["--peer", bootstrap]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.info: dict[str, Any] = {}
        self.peers: list[dict[str, Any]] = []

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if self.info_path.exists():
                self.info = json.loads(self.info_path.read_text())
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not start in time; see {self.log_path}")

    def poll(self, client: httpx.Client) -> None:
        try:
            self.peers = client.get(f"{self.info['http']}/v1/swarm/peers", timeout=2).json()
        except httpx.HTTPError:
            self.peers = []


def _table(nodes: list[DemoNode], elapsed_s: float) -> Table:
    names = {n.info.get("peer_id"): n.name for n in nodes}
    table = Table(title=f"membership after {elapsed_s:.1f} s", title_justify="left")
    table.add_column("node")
    table.add_column("peer id")
    table.add_column("bootstrapped from")
    table.add_column("knows", justify="right")
    table.add_column("peers seen")
    for i, node in enumerate(nodes):
        seen = sorted(names.get(p["peer_id"], p["peer_id"][-6:]) for p in node.peers if not p.get("self"))
        done = len(node.peers) == len(nodes)
        table.add_row(
            node.name,
            node.info.get("peer_id", "?")[-10:],
            nodes[i - 1].name if i else "-",
            f"[{'green' if done else 'yellow'}]{len(node.peers)}/{len(nodes)}[/]",
            ", ".join(seen),
        )
    return table


def _stop(nodes: list[DemoNode], timeout_s: float = 5.0) -> list[int | None]:
    for node in nodes:
        if node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    codes = []
    for node in nodes:
        try:
            codes.append(node.proc.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
            codes.append(None)
    return codes


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
            nodes[-1].wait_ready(started + timeout_s)
            console.print(f"  {nodes[-1].name}: {nodes[-1].info['addrs'][0]}", soft_wrap=True, highlight=False)
        converged_at = _watch(nodes, started, timeout_s, console)
    except (RuntimeError, TimeoutError) as err:
        console.print(f"[bold red]demo failed:[/] {err}")
        _stop(nodes)
        return 1
    codes = _stop(nodes)
    if converged_at is None:
        console.print(f"[bold red]not converged within {timeout_s:.0f} s[/]; logs in {workdir}")
        return 1
    console.print(
        f"[bold green]converged[/]: every node knows all {num_nodes} in {converged_at:.1f} s "
        f"(chain bootstrap, each node given only the previous one)"
    )
    console.print(f"shutdown exit codes: {codes}")
    return 0 if all(code == 0 for code in codes) else 1


def _watch(nodes: list[DemoNode], started: float, timeout_s: float, console: Console) -> float | None:
    with httpx.Client() as client, Live(console=console, refresh_per_second=4) as live:
        while time.monotonic() - started < timeout_s:
            for node in nodes:
                node.poll(client)
            elapsed = time.monotonic() - started
            live.update(_table(nodes, elapsed))
            if all(len(n.peers) == len(nodes) for n in nodes):
                return elapsed
            time.sleep(0.25)
    return None
