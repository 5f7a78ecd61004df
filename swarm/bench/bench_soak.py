"""`swarm bench soak`: serving and training nodes under steady client load while nodes are killed with SIGKILL
and restarted at random moments (seeded) and a hostile peer writes random bytes on every protocol they speak.

Serving nodes (`swarm join --roles serve`, the embedded `tiny` model in float32) take greedy streamed requests
from the Python client, a few at a time, each answer checked token by token against a greedy reference computed
here with the same model. Training nodes average rounds with each other. One serving and one training node,
drawn by the seed, are never killed: their resident memory over the run is the leak check. A node that dies
without being killed is a crash: recorded with its last log line, and restarted like a killed one.
Knows processes, the client and the scoring; what the nodes do inside is theirs.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from swarm.bench.soak_garbage import DEFAULT_GARBAGE_PROTOCOLS, GarbageWriter
from swarm.bench.soak_nodes import SoakNode, all_down_during, tree_rss_bytes, wait_all_ready
from swarm.bench.soak_report import RequestLog, memory_growth, score_requests
from swarm.client import AsyncClient

PROMPTS = ["def fib(n):", "import os\n", "class A:", "hello world", "for i in range(10):", "The quick brown fox"]
SERVE_ARGS = ["--roles", "serve", "--heartbeat-s", "0.5", "--peer-timeout-s", "3",
              "--set", "serving.dtype=float32", "--set", "serving.num_threads=1"]  # fmt: skip
TRAIN_ARGS = ["--roles", "train", "--heartbeat-s", "1", "--peer-timeout-s", "6",
              "--set", "training.inner_steps=5", "--set", "training.total_steps=100000",
              "--set", "training.max_corpus_bytes=100000", "--set", "training.eval_batches=1"]  # fmt: skip
Progress = Callable[[float, str], None]  # (fraction of the load phase done, what is happening)


@dataclass
class SoakSettings:
    """One soak run. Times are seconds of the load phase (nodes start and warm up before it)."""

    serve_nodes: int = 3
    train_nodes: int = 2
    load_s: float = 600.0
    warmup_s: float = 20.0  # into the load: memory is measured from here, after model loading and first steps
    concurrency: int = 3
    max_new_tokens: int = 24
    max_requests: int = 100_000
    kills: bool = True
    kill_interval_s: float = 30.0  # mean time between kills (exponential)
    downtime_s: tuple[float, float] = (2.0, 6.0)
    garbage_protocols: tuple[str, ...] = DEFAULT_GARBAGE_PROTOCOLS
    garbage_interval_s: float = 2.0
    garbage_bytes: int = 1 << 18
    sample_interval_s: float = 5.0
    request_timeout_s: float = 30.0
    start_timeout_s: float = 180.0
    model: str = "tiny"
    seed: int = 0
    logs_dir: Path | None = None  # keep every node's logs here (default: a temporary directory, removed)

    @classmethod
    def preset(cls, quick: bool, minutes: float | None, seed: int = 0) -> SoakSettings:
        """--quick: 2.5 minutes of load with a kill every ~20 s; otherwise `minutes` (10 by default)."""
        if quick:
            return cls(load_s=60 * (minutes or 2.5), kill_interval_s=20.0, seed=seed)
        return cls(load_s=60 * (minutes or 10.0), seed=seed)


def greedy_references(model: str, max_new_tokens: int) -> list[list[int]]:
    """What each prompt must stream: transformers' greedy generate() on the same weights, cut after EOS."""
    import torch

    from serving.model import load_model

    loaded = load_model(model)
    eos = loaded.tokenizer.eos_token_id
    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            gen = loaded.hf_model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)[0, ids.shape[1] :]
        tokens = gen.tolist()
        out.append(tokens[: tokens.index(eos) + 1] if eos in tokens else tokens)
    return out


class Soak:
    """The running soak: nodes, the clock, and what the load, chaos and sampling tasks record."""

    def __init__(self, settings: SoakSettings, workdir: Path, progress: Progress) -> None:
        self.s = settings
        self.progress = progress
        self.rng = random.Random(settings.seed)
        serve = [SoakNode(f"s{i}", "serve", workdir, [*SERVE_ARGS, "--model", settings.model])
                 for i in range(settings.serve_nodes)]  # fmt: skip
        ckpt = "training.checkpoint_dir={}"
        train = [SoakNode(f"t{i}", "train", workdir, [*TRAIN_ARGS, "--set", ckpt.format(workdir / f"ckpt-t{i}")])
                 for i in range(settings.train_nodes)]  # fmt: skip
        self.serve, self.nodes = serve, serve + train
        spared = [self.rng.choice(group) for group in (serve, train) if group]
        self.killable = [n for n in self.nodes if n not in spared]
        self.started = time.monotonic()
        self.load_start = self.load_end = 0.0
        self.logs: list[RequestLog] = []
        self.kills: list[dict[str, Any]] = []
        self.restart_failures: list[str] = []
        self.rss: dict[str, list[tuple[float, int]]] = {n.name: [] for n in self.nodes}
        self.rounds: dict[str, int] = {n.name: 0 for n in self.nodes if n.role == "train"}
        self.garbage: GarbageWriter | None = None

    def clock(self) -> float:
        return time.monotonic() - self.started

    def bootstrap(self) -> list[str]:
        return [n.addr for n in self.nodes]

    def start_nodes(self) -> None:
        self.progress(0.0, f"starting {len(self.nodes)} nodes")
        for node in self.nodes:
            node.start(self.bootstrap())
        wait_all_ready(self.nodes, self.s.start_timeout_s, self.clock)

    # ----- the load -----
    async def load(self, client: AsyncClient) -> None:
        async with trio.open_nursery() as nursery:
            for worker in range(self.s.concurrency):
                nursery.start_soon(self._worker, client, worker)

    async def _worker(self, client: AsyncClient, worker: int) -> None:
        rng = random.Random(self.s.seed * 1000 + worker)
        while self.clock() < self.load_end and len(self.logs) < self.s.max_requests:
            log = RequestLog(rng.randrange(len(PROMPTS)), self.clock())
            self.logs.append(log)
            await self._one_request(client, log)
            if log.outcome != "ok":
                await trio.sleep(0.5)  # a failing swarm is not hammered in a hot loop

    async def _one_request(self, client: AsyncClient, log: RequestLog) -> None:
        prompt = PROMPTS[log.prompt_index]
        with trio.move_on_after(self.s.request_timeout_s) as scope:
            try:
                async for delta in client.stream(prompt, max_new_tokens=self.s.max_new_tokens, temperature=0.0):
                    log.token_ids.extend(delta.token_ids)
                    log.peers.append(delta.peer_id)
            except Exception as err:  # every failure is recorded by its code; none ends the run
                log.outcome = getattr(getattr(err, "code", None), "name", None) or type(err).__name__
        if scope.cancelled_caught:
            log.outcome = "CLIENT_TIMEOUT"
        log.end_s = self.clock()
        log.nobody_serving = log.outcome != "ok" and all_down_during(self.serve, log.start_s, log.end_s)

    async def warm_up(self, client: AsyncClient) -> None:
        """Untimed and uncounted: wait until every trainer trains (a starting trainer takes the CPU from everyone
        else on a small machine) and a few requests in a row are answered."""
        self.progress(0.0, "warming up: trainers starting")
        with trio.fail_after(self.s.start_timeout_s):
            for node in self.nodes:
                while node.role == "train" and await trio.to_thread.run_sync(_step, node) < 1:
                    await trio.sleep(1.0)
            self.progress(0.0, "warming up: first answers")
            answered = 0
            while answered < self.s.concurrency:
                with trio.move_on_after(self.s.request_timeout_s):
                    try:
                        await client.generate(PROMPTS[0], max_new_tokens=2, temperature=0.0)
                        answered += 1
                        continue
                    except Exception:  # a cold swarm may refuse or time out: that is what the warm-up waits out
                        pass
                answered = 0
                await trio.sleep(1.0)

    # ----- kills, crashes, samples -----
    async def chaos(self, nursery: trio.Nursery) -> None:
        """Kill a node at random moments (exponential gaps); each comes back after a random downtime, while
        the next kill may already strike another. The spared nodes keep one server and one trainer up."""
        while True:
            await trio.sleep(self.rng.expovariate(1.0 / self.s.kill_interval_s))
            if self.clock() >= self.load_end - self.s.downtime_s[1]:
                return
            up = [n for n in self.killable if n.pid is not None and n.down_since is None]
            if not up:
                continue
            victim = self.rng.choice(up)
            downtime = self.rng.uniform(*self.s.downtime_s)
            self.kills.append({"t_s": round(self.clock(), 2), "node": victim.name, "downtime_s": round(downtime, 2)})
            await trio.to_thread.run_sync(victim.kill, self.clock)
            nursery.start_soon(self._restart_after, victim, downtime)

    async def _restart_after(self, node: SoakNode, downtime_s: float) -> None:
        await trio.sleep(downtime_s)
        await self.restart(node)

    async def restart(self, node: SoakNode, attempts: int = 3) -> None:
        for _ in range(attempts):
            node.start(self.bootstrap())
            try:
                await trio.to_thread.run_sync(node.wait_ready, self.s.start_timeout_s, self.clock)
                return
            except (RuntimeError, TimeoutError):  # e.g. its port not yet free again: try once more
                await trio.to_thread.run_sync(node.peer.kill)  # type: ignore[union-attr]
                await trio.sleep(1.0)
        self.restart_failures.append(node.name)

    async def sample(self, nursery: trio.Nursery) -> None:
        """Every few seconds: crashes (restarted), resident memory, training rounds, progress."""
        while True:
            for node in self.nodes:
                if node.exited_unasked(self.clock):
                    nursery.start_soon(self.restart, node)
                if node.pid is not None:
                    self.rss[node.name].append((self.clock(), tree_rss_bytes(node.pid)))
            for node in self.nodes:
                if node.role == "train" and node.pid is not None:
                    self.rounds[node.name] = max(self.rounds[node.name], await trio.to_thread.run_sync(_round, node))
            done = min(max(self.clock() - self.load_start, 0.0) / self.s.load_s, 1.0)
            self.progress(done, f"{len(self.logs)} requests, {len(self.kills)} kills, rounds {self.rounds}")
            await trio.sleep(self.s.sample_interval_s)

    def garbage_targets(self) -> list[tuple[str, str]]:
        return [(n.addr, n.peer_id) for n in self.nodes if n.pid is not None and n.down_since is None]

    # ----- the run -----
    async def main(self) -> None:
        network = {"heartbeat_s": 0.5, "peer_timeout_s": 3.0}
        addrs = [n.addr for n in self.serve]
        # Random routing spreads the streams over every server, so that killing any of them cuts streams short.
        client = AsyncClient(
            addrs, timeout_s=self.s.request_timeout_s, stall_timeout_s=5.0, routing="random", network=network
        )
        async with client as c:
            await c.wait_for_servers(len(self.serve), timeout_s=self.s.start_timeout_s)
            await self.warm_up(c)
            self.load_start = self.clock()
            self.load_end = self.load_start + self.s.load_s
            self.progress(0.0, f"load from t={self.load_start:.0f} s")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.sample, nursery)
                if self.s.garbage_protocols:
                    self.garbage = GarbageWriter(
                        self.garbage_targets, self.s.garbage_protocols, self.s.garbage_bytes,
                        self.s.garbage_interval_s, self.s.seed,
                    )  # fmt: skip
                    await nursery.start(self.garbage.run)
                if self.s.kills and self.killable:
                    nursery.start_soon(self.chaos, nursery)
                await self.load(c)
                self.load_end = self.clock()
                nursery.cancel_scope.cancel()

    def _name(self, peer_id: str) -> str:
        return next((n.name for n in self.nodes if n.peer_id == peer_id), peer_id[-8:])

    def _failure(self, log: RequestLog) -> dict[str, Any]:
        peers = [self._name(p) for p in dict.fromkeys(log.peers)]
        return {"start_s": round(log.start_s, 2), "end_s": round(log.end_s, 2), "outcome": log.outcome,
                "tokens": len(log.token_ids), "peers": peers, "nobody_serving": log.nobody_serving}  # fmt: skip

    def result(self, references: list[list[int]]) -> dict[str, Any]:
        scores = score_requests(self.logs, references)
        survivors = [n for n in self.nodes if not n.killed and not n.crashes]
        after = self.load_start + self.s.warmup_s
        growth = {n.name: memory_growth(self.rss[n.name], after) for n in survivors}
        known = [g for g in growth.values() if g is not None]
        mib = {n.name: [[round(t, 1), round(b / 2**20, 1)] for t, b in self.rss[n.name]] for n in survivors}
        memory = {n.name: {"growth": growth[n.name], "rss_mib": mib[n.name]} for n in survivors}
        garbage = self.garbage
        results = {
            "load_s": round(self.load_end - self.load_start, 1),
            "requests": {k: v for k, v in scores.items() if k not in ("lost_tokens", "duplicated_tokens")},
            "started_on": dict(Counter(self._name(log.peers[0]) for log in self.logs if log.peers)),
            "failed_requests": [self._failure(log) for log in self.logs if log.outcome != "ok"],
            "kills": self.kills,
            "crashes": {n.name: n.crashes for n in self.nodes if n.crashes},
            "restart_failures": self.restart_failures,
            "garbage": {"streams": dict(garbage.counts), "bytes": garbage.bytes_written} if garbage else {},
            "training_rounds": {"by_node": self.rounds, "max": max(self.rounds.values(), default=0)},
            "memory": memory,
        }
        ratios = {
            "lost_tokens": scores["lost_tokens"],
            "duplicated_tokens": scores["duplicated_tokens"],
            "failed_request_fraction": scores["failed_request_fraction"],
            "memory_growth": max(known) if known else None,
        }
        return {"results": results, "ratios": ratios}


def _training(node: SoakNode, field: str) -> int:
    """A training figure ("round", "step") a node reports for itself (0 when it does not answer)."""
    try:
        rows = httpx.get(f"{node.http}/v1/swarm/peers", timeout=5.0).json()
    except (httpx.HTTPError, ValueError):
        return 0
    return max((int(r["training"].get(field, 0)) for r in rows if r.get("self") and r.get("training")), default=0)


def _round(node: SoakNode) -> int:
    return _training(node, "round")


def _step(node: SoakNode) -> int:
    return _training(node, "step")


def run_soak(settings: SoakSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run the soak and return `{"bench", "config", "results", "ratios"}` (the caller adds `machine`)."""
    from dataclasses import asdict

    progress = progress or (lambda fraction, line: None)
    progress(0.0, "greedy references")
    references = greedy_references(settings.model, settings.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="swarm-soak-") as tmp:
        workdir = Path(settings.logs_dir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        soak = Soak(settings, workdir, progress)
        try:
            soak.start_nodes()
            trio.run(soak.main)
        finally:
            for node in soak.nodes:
                node.stop()
        out = soak.result(references)
    logs = str(settings.logs_dir) if settings.logs_dir else None
    config = asdict(settings) | {"garbage_protocols": list(settings.garbage_protocols), "logs_dir": logs}
    return {"bench": "soak", "config": config, **out}
