"""Training as a child process beside a serving engine on CPU: micro-steps granted through a `Gate`, at the lowest
OS scheduling priority, its torch thread count following what the arbiter grants.

Being a process, the trainer never holds the serving process's GIL; at SCHED_IDLE the kernel preempts it as soon as
serving's threads want a core, and a revoked grant stops it where it is (`Gate.attach`). It trains the configured
Llama on the configured corpus, batches a pure function of (seed, step) and evaluates every `eval_every` steps on
fixed windows, so two runs of the same number of steps see the same data whatever their timing.
It knows the training API and the gate, nothing about serving or peers.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from swarm.runtime.arbiter import Gate, TrainerStopped, lower_priority, micro_batch_for

READY_TIMEOUT_S = 120.0


@dataclass
class TrainerSpec:
    """What the child runs: `micro_batch` None = profile the largest that fits `tau_s`."""

    config_json: str
    tau_s: float
    max_threads: int
    micro_batch: int | None = None
    eval_every: int = 0
    eval_batches: int = 2
    max_steps: int = 1_000_000
    lower_priority: bool = True


@dataclass
class TrainerReport:
    micro_batch: int = 0
    priority: str = ""
    micro_step_s: dict[int, float] = field(default_factory=dict)
    evals: dict[int, float] = field(default_factory=dict)  # step -> eval loss
    losses: list[float] = field(default_factory=list)


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds every thread of process `pid` has run so far (Linux schedstat; 0 where it cannot be read)."""
    total_ns = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            with open(f"{task.path}/schedstat") as f:
                total_ns += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return total_ns / 1e9


class TrainerProcess:
    """Parent-side handle of the child trainer. `start()`, then `wait_ready()`; `steps` counts optimizer steps."""

    def __init__(self, spec: TrainerSpec, gate: Gate) -> None:
        self.spec = spec
        self.gate = gate
        ctx = multiprocessing.get_context("spawn")
        self._steps = ctx.Value("q", 0, lock=False)
        self._out: Any = ctx.Queue()
        self._proc = ctx.Process(target=_child_main, args=(spec, gate, self._out, self._steps), daemon=True)
        self.report = TrainerReport()

    @property
    def steps(self) -> int:
        return self._steps.value

    def cpu_s(self) -> float:
        """CPU seconds every thread of the child has run so far (0 where it cannot be read)."""
        return process_cpu_s(self._proc.pid)

    def start(self) -> None:
        self._proc.start()
        self.gate.attach(self._proc.pid)
        # A stopped child ignores everything but SIGKILL and SIGCONT: continue it before the interpreter's exit
        # terminates and joins its daemonic children (handlers run last-registered first).
        atexit.register(self.gate.close)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> TrainerReport:
        deadline = time.monotonic() + timeout_s
        while not self.report.micro_batch:
            if not self._proc.is_alive():
                raise RuntimeError(f"trainer process exited with code {self._proc.exitcode} before it was ready")
            if time.monotonic() > deadline:
                raise TimeoutError(f"trainer process not ready within {timeout_s} s")
            self.poll(0.2)
        return self.report

    def poll(self, timeout_s: float = 0.0) -> None:
        """Fold in what the child reported so far."""
        try:
            while True:
                kind, *rest = self._out.get(timeout=timeout_s) if timeout_s else self._out.get_nowait()
                timeout_s = 0.0
                if kind == "ready":
                    self.report.micro_batch, self.report.priority, self.report.micro_step_s = rest
                elif kind == "eval":
                    self.report.evals[rest[0]] = rest[1]
                elif kind == "loss":
                    self.report.losses.append(rest[0])
        except queue.Empty:
            return

    def stop(self, timeout_s: float = 10.0) -> TrainerReport:
        self.gate.close()
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout_s)
        self.poll(0.1)
        atexit.unregister(self.gate.close)
        return self.report


def _child_main(spec: TrainerSpec, gate: Gate, out: Any, steps: Any) -> None:
    # Before torch loads: OpenMP threads that sleep when idle, never spinning on a core serving may want.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # With nothing to profile, even the start-up (imports, model, corpus) runs only where serving leaves room.
    priority = lower_priority() if spec.lower_priority and spec.micro_batch else ""
    import torch

    from training.config import TrainingConfig
    from training.data import TokenData, load_corpus
    from training.inner import InnerLoop
    from training.model import load_train_model

    exit_with_parent()
    threads = spec.max_threads
    torch.set_num_threads(threads)
    cfg = TrainingConfig.model_validate_json(spec.config_json)
    torch.manual_seed(cfg.seed)
    built = load_train_model(cfg.model)
    inner = InnerLoop(built.model, cfg, built.ignored_label())
    data = TokenData(load_corpus(cfg.data_path, cfg.max_corpus_bytes, built.tokenizer), cfg.eval_fraction, cfg.seq_len)
    shard = data.shard(0, 1)
    eval_set = data.eval_batches(cfg.batch_size, spec.eval_batches)
    timings: dict[int, float] = {}
    micro = spec.micro_batch or _profile(inner, data.batch(shard, cfg.batch_size, cfg.seed, 0), spec.tau_s, timings)
    # Profiled at normal priority: at SCHED_IDLE on a busy machine the timings would measure the wait, not the work.
    priority = priority or (lower_priority() if spec.lower_priority else "normal")
    out.put(("ready", micro, priority, timings))

    def run(fn: Any) -> None:
        nonlocal threads

        def with_threads() -> None:
            nonlocal threads
            if gate.threads != threads:  # the arbiter grants all threads when serving idles, one beside a step
                threads = gate.threads
                torch.set_num_threads(threads)
            fn()

        gate.run(with_threads)

    step = 0
    try:
        while step < spec.max_steps:
            loss = inner.step_in_micro_batches(data.batch(shard, cfg.batch_size, cfg.seed, step), micro, run)
            step += 1
            steps.value = step
            out.put(("loss", loss))
            if spec.eval_every and step % spec.eval_every == 0:
                out.put(("eval", step, _evaluate(inner, eval_set, run)))
    except TrainerStopped:
        pass


def exit_with_parent() -> None:
    """A parent killed without a chance to stop us (SIGKILL, a timeout) must not leave a trainer behind."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _profile(inner: Any, batch: Any, tau_s: float, timings: dict[int, float]) -> int:
    """Largest micro-batch whose forward + backward fits `tau_s` (median of 3 after a warm-up); gradients of the
    timing runs are dropped."""

    def time_micro(size: int) -> float:
        inner.backward(batch[:size])
        runs = []
        for _ in range(3):
            start = time.perf_counter()
            inner.backward(batch[:size])
            runs.append(time.perf_counter() - start)
        inner.optimizer.zero_grad(set_to_none=True)
        timings[size] = statistics.median(runs)
        return timings[size]

    return micro_batch_for(time_micro, len(batch), tau_s)


def _evaluate(inner: Any, eval_set: list[Any], run: Any) -> float:
    """Mean eval loss, one granted micro-step per eval batch."""
    losses: list[float] = []
    for batch in eval_set:
        run(lambda b=batch: losses.append(inner.evaluate([b])))
    return sum(losses) / len(losses)
