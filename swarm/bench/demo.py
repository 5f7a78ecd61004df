"""`swarm demo`: the mission on the embedded defaults, on this machine, with real `swarm join` processes on 127.0.0.1.

1. Three nodes join as a chain (each is given only the previous one) and train the embedded network from its seed
   together with DiLoCo on the bundled corpus; their eval loss is shown round by round.
2. A serving node joins and serves the checkpoint they wrote; one answer is streamed through the OpenAI API of a
   training node (which routes it to the server over libp2p), one through the Python client, each with its TTFT.
3. Three RL nodes share rollouts for a few rounds (GRPO on a LoRA adapter of the warm-started `tiny` model: the
   network trained in two minutes earns no task reward yet).
It ends with a summary table, a PNG of the loss and reward curves and an optional JSON summary. Knows the
phases and what to show; the work happens inside the nodes.
"""

from __future__ import annotations

import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from swarm.bench.demo_report import Summary, membership_table, training_table
from swarm.bench.demo_serve import Answer, RlProgress, client_generate, model_ids, openai_stream, reward_curve
from swarm.bench.demo_serve import served_requests as count_served
from swarm.bench.local_swarm import LocalPeer, stop_all
from swarm.bench.train_swarm import THREADS_ENV, TrainSwarm

NODE_ARGS = ("--heartbeat-s", "1", "--peer-timeout-s", "10")
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0  # a node's clean exit (checkpoint, threads) can take long on a busy machine


@dataclass(frozen=True)
class DemoPlan:
    """How much work each phase does."""

    model: str  # the embedded network trained from its seed
    total_steps: int
    inner_steps: int
    batch_size: int
    seq_len: int
    max_corpus_bytes: int
    inner_lr: float
    rl_rounds: int
    max_tokens: int

    def train_settings(self, num_nodes: int, precision: str = "auto") -> dict[str, Any]:
        return {"training.model": self.model, "training.precision": precision, "training.total_steps": self.total_steps,
                "training.inner_steps": self.inner_steps, "training.warmup_steps": min(10, self.total_steps),
                "training.batch_size": self.batch_size, "training.seq_len": self.seq_len,
                "training.max_corpus_bytes": self.max_corpus_bytes, "training.eval_batches": 4,
                "training.inner_lr": self.inner_lr, "training.matchmaking_time_s": 3.0, "training.data_shards": 3,
                "training.keep_checkpoints": 1, "training.start_peers": num_nodes - 1}  # fmt: skip


# Two rounds of 20 steps: on a 2-core CPU without native bf16 (trained in fp32, three nodes at about 0.3 steps/s
# each) 60 steps took 5 of a 6.7-minute demo; the eval loss falls by half in the first round.
FULL = DemoPlan("default-random", 40, 20, 8, 128, 2_000_000, 3e-3, 3, 128)
# The quick plan's model has seen 100 steps: it ends a line rarely (one run sampled 128 bytes without a newline), so
# its answers get room to reach one; they still stop at the line's end.
QUICK = DemoPlan("tiny", 100, 50, 8, 64, 300_000, 1e-2, 2, 512)
# Lines a briefly trained byte model can finish: the answer is the rest of the line (stop at its end).
PROMPTS = ("import os\nimport sys\nimport ", "from os import path\nfrom typing import ")
STOP = ["\n"]


def demo_precision() -> str:
    """The training nodes' precision: `auto` (bf16 autocast) on a GPU; on a CPU bf16 only where it multiplies
    matrices faster than fp32 (with AVX-512 BF16 or AMX; with AVX2 alone a bf16 step took 10 s where fp32 takes a
    fraction of one)."""
    import torch

    from training.inner import fastest_cpu_precision

    return "auto" if torch.cuda.is_available() else fastest_cpu_precision()


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console)  # fmt: skip


class Demo:
    """The phases, the processes they started (all stopped by `close`) and what they measured."""

    def __init__(self, plan: DemoPlan, num_nodes: int, deadline: float, console: Console) -> None:
        self.plan, self.num_nodes, self.deadline, self.console = plan, num_nodes, deadline, console
        self.workdir = Path(tempfile.mkdtemp(prefix="swarm-demo-"))
        per_node = {k: {"training.data_shard": k % 3} for k in range(num_nodes)}
        self.precision = demo_precision()
        settings = plan.train_settings(num_nodes, self.precision)
        self.train = TrainSwarm(self.workdir, num_nodes, settings, per_node=per_node, extra_args=NODE_ARGS)
        self.server: LocalPeer | None = None
        self.rl_nodes: list[LocalPeer] = []
        self.summary = Summary(num_nodes=num_nodes, plan=plan.__dict__, workdir=str(self.workdir))
        self.started = time.monotonic()

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the demo ran past --timeout-s")
        return left

    # 1. join and train ------------------------------------------------------------------------------------
    def join_and_train(self) -> None:
        console, train = self.console, self.train
        console.print(f"[bold]1. {self.num_nodes} nodes join (a chain) and train the embedded network "
                      f"({self.plan.model}, {self.precision}) with DiLoCo[/] (logs in {self.workdir})")  # fmt: skip
        train.start_all(min(self._left(), START_TIMEOUT_S))
        self._follow_training()
        curve = train.eval_curve()
        self.summary.train(curve, time.monotonic() - self.started)

    def _follow_training(self) -> None:
        train, progress = self.train, _progress(self.console)
        task = progress.add_task("training", total=self.plan.total_steps)
        with Live(console=self.console, refresh_per_second=4) as live:
            while not train.finished():
                self._left()
                train.poll()
                rows = [self._peers(node) for node in train.nodes]
                if self.summary.converged_s is None and all(len(r) >= self.num_nodes for r in rows):
                    self.summary.converged_s = round(time.monotonic() - self.started, 1)
                progress.update(task, completed=min(p.step for p in train.progress))
                live.update(Group(membership_table(train.nodes, rows, time.monotonic() - self.started),
                                  training_table(train), progress))  # fmt: skip
                time.sleep(1.0)

    def _peers(self, node: LocalPeer) -> list[dict[str, Any]]:
        try:
            return node.peers(timeout_s=3.0)
        except Exception:  # a busy node answers on the next poll
            return []

    # 2. serve ---------------------------------------------------------------------------------------------
    def serve(self) -> None:
        console = self.console
        checkpoint = self.workdir / f"demo-{self.plan.model}-trained"
        shutil.copytree(self.train.newest_checkpoint(0), checkpoint)
        console.print(f"[bold]2. A serving node serves the trained checkpoint[/] ({checkpoint.name})")
        self.server = LocalPeer(self.workdir, "server", ["--roles", "serve", "--model", str(checkpoint), *NODE_ARGS,
                                "--peer", self.train.nodes[-1].addr, "--set", "serving.num_threads=1"],
                                env=THREADS_ENV)  # fmt: skip
        gateway = self.train.nodes[0]
        with _progress(console) as progress:
            progress.add_task("the server loads the checkpoint and profiles this machine", total=None)
            self.server.wait_ready(min(self._left(), START_TIMEOUT_S))
        with _progress(console) as progress:
            progress.add_task(f"{gateway.name} learns of the server's model through gossip", total=None)
            while not (models := model_ids(gateway.http)):
                self._left()
                time.sleep(0.5)
        model = models[0]
        answers: list[Answer] = []
        prompt_a, prompt_b = PROMPTS
        answers.append(openai_stream(gateway.http, model, prompt_a, self.plan.max_tokens, STOP, self._left()))
        answers.append(client_generate([self.server.addr], checkpoint, prompt_b, self.plan.max_tokens, STOP,
                                       min(self._left(), 60.0)))  # fmt: skip
        for a in answers:
            console.print(f"  [bold]{a.via}[/] ({a.finish_reason}, TTFT {a.ttft_ms or 0:.0f} ms): "
                          f"{a.prompt!r} -> {a.text!r}", soft_wrap=True, highlight=False)  # fmt: skip
        self.summary.serve(answers, count_served(self.server.http), model)

    # 3. RL ------------------------------------------------------------------------------------------------
    def rl(self) -> None:
        from swarm.cli.rl import cached_warm_start
        from swarm.runtime.config import build_config
        from training.rl_warmstart import WarmStartSettings

        console = self.console
        codes = stop_all(self.train.nodes, timeout_s=STOP_TIMEOUT_S)  # training is over; their CPU goes to RL
        self.summary.exit_codes += codes
        console.print(f"[bold]3. RL: {self.num_nodes} nodes share rollouts for {self.plan.rl_rounds} rounds[/]")
        rl_cfg = build_config({}).rl
        settings = WarmStartSettings(max_new_tokens=rl_cfg.max_new_tokens, lr=1e-2)
        with _progress(console) as progress:
            task = progress.add_task("warm start of tiny (cached after the first run)", total=settings.max_steps)

            def on_probe(message: str) -> None:  # "warm start step N: loss ..., probe reward ..."
                step = re.match(r"warm start step (\d+)", message)
                progress.update(task, completed=int(step.group(1)) if step else None, description=message)

            warm, stats = cached_warm_start("tiny", 0, rl_cfg, settings, on_probe)
        console.print(f"  warm start: {stats['steps']} steps, probe reward {stats['probe']['mean']:.3f} ({warm})")
        logs = [RlProgress(self.workdir / f"rl-{k}.jsonl") for k in range(self.num_nodes)]
        with _progress(console) as progress:
            progress.add_task(f"starting {self.num_nodes} RL nodes (a chain from the server)", total=None)
            self._start_rl_nodes(warm, logs)
        with _progress(console) as progress:
            task = progress.add_task("RL rounds (all nodes)", total=self.plan.rl_rounds * self.num_nodes)
            while any(len(log.rounds) < self.plan.rl_rounds for log in logs):
                self._left()
                for node in self.rl_nodes:
                    if node.proc.poll() is not None:
                        raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}")
                for log in logs:
                    log.poll()
                done = sum(min(len(log.rounds), self.plan.rl_rounds) for log in logs)
                reward = reward_curve(logs)
                last = f", mean reward {list(reward.values())[-1]:.2f}" if reward else ""
                progress.update(task, completed=done, description=f"RL rounds (all nodes){last}")
                time.sleep(0.5)
        self.summary.rl(logs)

    def _start_rl_nodes(self, warm: Path, logs: list[RlProgress]) -> None:
        for k in range(self.num_nodes):
            boot = self.rl_nodes[-1].addr if self.rl_nodes else self.server.addr
            sets = {"rl.max_rounds": self.plan.rl_rounds, "rl.log_file": logs[k].path, "rl.start_peers":
                    self.num_nodes - 1, "rl.checkpoint_dir": self.workdir / f"rl-ckpt-{k}", "rl.round_wait_s": 5.0,
                    "serving.num_threads": 1, "serving.dtype": "float32"}  # fmt: skip
            args = ["--roles", "rl", "--model", str(warm), *NODE_ARGS, "--peer", boot]
            for key, value in sets.items():
                args += ["--set", f"{key}={value}"]
            self.rl_nodes.append(LocalPeer(self.workdir, f"rl-{k}", args, env=THREADS_ENV))
            self.rl_nodes[-1].wait_ready(min(self._left(), START_TIMEOUT_S))

    def close(self) -> None:
        nodes = [*self.train.nodes, *([self.server] if self.server else []), *self.rl_nodes]
        codes = stop_all([n for n in nodes if n.proc.poll() is None], timeout_s=STOP_TIMEOUT_S)
        self.summary.exit_codes += codes
        self.summary.total_s = round(time.monotonic() - self.started, 1)


def _stop_on_sigterm() -> Any:
    """SIGTERM ends the demo as Ctrl-C does, through `close` (which stops every node it started: killed outright, the
    demo left its nodes running); returns the handler it replaced (None off the main thread, where none is set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def run_demo(
    num_nodes: int = 3,
    timeout_s: float = 600.0,
    *,
    quick: bool = False,
    json_path: Path | None = None,
    plot_path: Path | None = None,
    console: Console | None = None,
) -> int:
    """Run the demo; returns the exit code (0 when every phase worked and the summary shows what it must)."""
    console = console or Console()
    demo = Demo(QUICK if quick else FULL, num_nodes, time.monotonic() + timeout_s, console)
    previous = _stop_on_sigterm()
    try:
        demo.join_and_train()
        demo.serve()
        demo.rl()
    except Exception as err:  # any phase: every process it started is stopped, and the logs stay
        console.print(f"[bold red]demo failed:[/] {type(err).__name__}: {err}\nlogs in {demo.workdir}")
        return 1
    finally:
        demo.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return demo.summary.finish(console, json_path, plot_path or demo.workdir / "demo.png")
