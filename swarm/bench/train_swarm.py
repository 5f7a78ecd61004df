"""A training swarm on this machine: `swarm join --roles train` processes on 127.0.0.1, bootstrapped as a chain,
watched through their `/metrics` until each has taken the run's last inner step.

Used by `swarm demo` and `swarm model train-default`. Each node evaluates the held-out split when it starts and at
every round's end; this module records those eval losses per node and round. Knows processes, the figures the
nodes export and their checkpoint directories; the training itself happens inside the nodes.
"""

from __future__ import annotations

import math
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from swarm.bench.local_swarm import LocalPeer, stop_all

TRAIN_ARGS = ("--roles", "train", "--heartbeat-s", "1", "--peer-timeout-s", "10")
METRIC = re.compile(r"^(swarm_train_(?:round|step|loss|eval_loss)) (\S+)$", re.MULTILINE)
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core each: the nodes share the machine


@dataclass
class NodeProgress:
    """What one node's `/metrics` said last, and the eval loss it reported at each round (0: before training)."""

    round: int = 0
    step: int = 0
    loss: float = math.nan
    eval_loss: float = math.nan
    eval_by_round: dict[int, float] = field(default_factory=dict)

    def update(self, metrics_text: str) -> None:
        values = {name: float(v) for name, v in METRIC.findall(metrics_text)}
        if "swarm_train_step" not in values:
            return  # the training role is not set up yet
        self.round, self.step = int(values["swarm_train_round"]), int(values["swarm_train_step"])
        self.loss = values.get("swarm_train_loss", math.nan)
        new_eval = values.get("swarm_train_eval_loss", math.nan)
        # A node evaluates right after a round's end, after it moved its round on: a changed value belongs to the
        # round read with it (an unchanged one may still be the round before's).
        if math.isfinite(new_eval) and new_eval != self.eval_loss:
            self.eval_by_round[self.round] = new_eval
        self.eval_loss = new_eval


class TrainSwarm:
    """`num_nodes` training nodes with the same `--set` overrides (plus `per_node(k)`'s), checkpoints under
    `workdir/ckpt-k`. Node 0 starts first; the others once node 0 trains, so they find its averaging DHT."""

    def __init__(
        self,
        workdir: Path,
        num_nodes: int,
        settings: dict[str, Any],
        *,
        per_node: dict[int, dict[str, Any]] | None = None,
        extra_args: tuple[str, ...] = (),
        name: str = "node",
    ) -> None:
        self.workdir, self.num_nodes, self.settings = Path(workdir), num_nodes, settings
        self.per_node = per_node or {}
        self.extra_args, self.name = extra_args, name
        self.total_steps = int(settings["training.total_steps"])
        self.inner_steps = int(settings["training.inner_steps"])
        self.nodes: list[LocalPeer] = []
        self.progress: list[NodeProgress] = []

    def checkpoint_dir(self, k: int) -> Path:
        return self.workdir / f"ckpt-{k}"

    def _args(self, k: int, bootstrap: str | None) -> list[str]:
        sets = {**self.settings, **self.per_node.get(k, {}), "training.checkpoint_dir": self.checkpoint_dir(k)}
        args = [*TRAIN_ARGS, *self.extra_args]
        for key, value in sets.items():
            args += ["--set", f"{key}={value}"]
        if bootstrap:
            args += ["--peer", bootstrap]
        return args

    def start_all(self, timeout_s: float) -> None:
        """Start every node at once (`poll` notices when each listens). Each gets an identity and a free port
        first, so node k can be given node k-1's address before that one listens (discovery retries). Node 0
        starts its averaging DHT at once; the others wait for its address in gossip, so all join one DHT."""
        from comms.identity import generate_identity, peer_id_of, write_identity

        addrs = []
        for k in range(self.num_nodes):
            key = generate_identity()
            write_identity(self.workdir / f"{self.name}-{k}.key", key)
            addrs.append(f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{peer_id_of(key)}")
        for k, addr in enumerate(addrs):
            key_file = self.workdir / f"{self.name}-{k}.key"
            args = [*self._args(k, addrs[k - 1] if k else None), "--identity", str(key_file),
                    "--set", f"training.discovery_wait_s={0.0 if k == 0 else timeout_s}"]  # fmt: skip
            local = ("--listen", addr.rsplit("/p2p/", 1)[0], "--http", "127.0.0.1:0")
            self.nodes.append(LocalPeer(self.workdir, f"{self.name}-{k}", args, local_args=local, env=THREADS_ENV))
            self.progress.append(NodeProgress())

    def start_node(self, timeout_s: float) -> LocalPeer:
        k = len(self.nodes)
        bootstrap = self.nodes[-1].addr if self.nodes else None
        node = LocalPeer(self.workdir, f"{self.name}-{k}", self._args(k, bootstrap), env=THREADS_ENV)
        self.nodes.append(node)
        self.progress.append(NodeProgress())
        return node.wait_ready(timeout_s)

    def poll(self) -> list[NodeProgress]:
        for node, progress in zip(self.nodes, self.progress, strict=True):
            if node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}")
            if not node.info:
                if not node.info_file.exists():
                    continue  # still setting up: it writes its info file once it listens
                node.wait_ready(1.0)
            try:
                progress.update(httpx.get(f"{node.http}/metrics", timeout=5.0).text)
            except httpx.HTTPError:
                pass  # a busy node answers on the next poll
        return self.progress

    def set_up(self, k: int) -> bool:
        """Node k built its model and evaluated it once (it announces its averaging addresses now)."""
        return self.progress[k].step > 0 or bool(self.progress[k].eval_by_round)

    @property
    def last_round(self) -> int:
        return self.total_steps // self.inner_steps

    def finished(self) -> bool:
        """Every node took its last step and reported its last round's eval loss."""
        return len(self.progress) == self.num_nodes and all(
            p.step >= self.total_steps and self.last_round in p.eval_by_round for p in self.progress
        )

    def eval_curve(self) -> dict[int, float]:
        """Eval loss per round: the mean over the nodes that reported that round."""
        rounds = sorted({r for p in self.progress for r in p.eval_by_round})
        curve = {}
        for r in rounds:
            values = [p.eval_by_round[r] for p in self.progress if r in p.eval_by_round]
            curve[r] = sum(values) / len(values)
        return curve

    def newest_checkpoint(self, k: int = 0) -> Path:
        rounds = sorted(p for p in self.checkpoint_dir(k).glob("round-*") if p.is_dir())
        if not rounds:
            raise RuntimeError(f"{self.nodes[k].name} wrote no checkpoint under {self.checkpoint_dir(k)}")
        return rounds[-1]

    def stop(self) -> list[int | None]:
        return stop_all(self.nodes, timeout_s=30.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Any, deadline: float, poll: Any, interval_s: float = 1.0) -> bool:
    """Call `poll` every `interval_s` until `predicate()` holds (True) or `deadline` (monotonic) passes (False)."""
    while time.monotonic() < deadline:
        poll()
        if predicate():
            return True
        time.sleep(interval_s)
    return False
