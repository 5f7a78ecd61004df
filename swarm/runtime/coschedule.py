"""Wires a node's training peer to its serving engine through the arbiter: `swarm` knows both, `serving` and
`training` never know each other.

The peer's inner steps run as micro-batches sized so one fits `micro_step_share` of the tightest TPOT target, each
granted by the arbiter from the engine's slack; an online request's arrival revokes the grant from the submitting
thread; the engine announces `reserved_share` of itself as taken, so routers send online work elsewhere while
training runs. On CPU the inner steps run in a child process (`InnerStepProcess`) at SCHED_IDLE, stopped at once
when a grant is revoked, its torch thread count following the grant, and never holding the serving process's GIL;
evaluations run there too, one granted eval batch at a time. The peer itself (averaging, the outer step, state
sharing, checkpoints, the announce) stays in the node's training thread, on the same weights and optimizer state,
which both processes map from shared memory; its outer step, the state it shares and its checkpoints are granted
pieces of work through the same gate (a revocation lets the piece in flight end; the yield is measured to its end),
so none of them takes the cores while serving runs. On a GPU the inner steps and those pieces stay in that thread,
on a low-priority CUDA stream. The training thread drops itself to SCHED_IDLE (nice 19 where not allowed).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import statistics
import threading
import time
from typing import Any

from protocols.messages import LOAD_PROBE_PROMPT_TOKENS
from swarm.runtime.arbiter import Arbiter, CoscheduleConfig, Gate, TrainerStopped, lower_priority, micro_batch_for
from swarm.runtime.micro_trainer import process_cpu_s

log = logging.getLogger(__name__)


def tightest_tpot_s(engine: Any) -> float:
    """The node's default TPOT target, else the bench's definition: k x the profiled single-request decode step."""
    cfg = engine.config
    if cfg.default_tpot_ms:
        return cfg.default_tpot_ms / 1000.0
    return cfg.tpot_slo_factor * engine.latency.decode_step_s(1, LOAD_PROBE_PROMPT_TOKENS)


def time_backward(inner: Any, batch: Any) -> float:
    """Median of 3 forward + backward passes on `batch`; the gradients are dropped."""
    inner.backward(batch)
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        inner.backward(batch)
        runs.append(time.perf_counter() - start)
    inner.optimizer.zero_grad(set_to_none=True)
    return statistics.median(runs)


class CoscheduledTraining:
    """Created once the engine runs and the peer is set up; `start()` before the training thread trains."""

    def __init__(self, engine: Any, peer: Any, config: CoscheduleConfig) -> None:
        self.engine = engine
        self.peer = peer
        self.config = config
        self.gate = Gate()
        self.tau_s = config.micro_step_share * tightest_tpot_s(engine)
        self.on_cpu = peer.inner.device.type == "cpu" and can_share(peer.inner)
        self.process: InnerStepProcess | None = None
        # torch's thread count is per process: a trainer process follows the slack with its own, a trainer thread
        # (GPU) is granted one thread's worth.
        threads = len(os.sched_getaffinity(0)) if self.on_cpu else 1
        self.arbiter = Arbiter(engine.slack, self.gate, tau_s=self.tau_s, max_threads=threads, config=config)
        self.priority = "normal"

    def start(self) -> str:
        peer = self.peer
        batch = peer.next_batch()
        peer.micro_batch = micro_batch_for(lambda n: time_backward(peer.inner, batch[:n]), len(batch), self.tau_s)
        where = "in this process"
        if self.on_cpu:
            self.process = InnerStepProcess(peer, self.gate, self.arbiter.max_threads)
            self.process.start()
            self.arbiter.trainer_cpu_s = self.process.cpu_s
            peer.inner_step = self.process.step
            peer.inner_eval = self.process.evaluate
            # the outer step, state sharing and checkpoints: granted pieces of the training thread
            peer.side_gate = functools.partial(self.gate.run, in_thread=True)
            where = f"in a child process at {self.process.priority}, evaluations too"
        else:
            peer.micro_gate = peer.side_gate = self._on_gpu_stream(self.gate.run)
        self.engine.on_online_arrival = self.arbiter.on_arrival
        self.engine.reserved_share = self.config.reserved_share
        self.arbiter.start()
        return (f"training co-scheduled with serving: inner steps {where}, micro-batch {peer.micro_batch} "
                f"of {len(batch)} (tau {1000 * self.tau_s:.1f} ms), "
                f"reserved share {self.config.reserved_share:.2f}")  # fmt: skip

    def _on_gpu_stream(self, run: Any) -> Any:
        """On a GPU: each granted micro-step on a low-priority CUDA stream (serving's is the highest), waited for
        before the step counts as done, so a revoked trainer has nothing left queued on the device."""
        import torch

        if not torch.cuda.is_available() or self.peer.inner.device.type != "cuda":
            return run
        stream = torch.cuda.Stream(self.peer.inner.device, priority=0)

        def on_stream(micro_step: Any) -> None:
            def body() -> None:
                with torch.cuda.stream(stream):
                    micro_step()
                stream.synchronize()

            run(body)

        return on_stream

    def lower_thread_priority(self) -> None:
        """Called from the training thread itself."""
        self.priority = lower_priority(threading.get_native_id())
        log.info("training thread at %s priority", self.priority)

    def stop(self) -> None:
        """Close the gate (a training thread waiting for a grant raises TrainerStopped) and detach from the engine."""
        self.arbiter.stop()
        self.engine.on_online_arrival = None
        self.engine.reserved_share = 0.0
        if self.process is not None:
            self.process.stop()


def share_inner_state(inner: Any) -> dict[str, Any]:
    """Move the inner loop's weights and AdamW state into shared memory, in place: every parameter and state tensor
    becomes a view of one shared fp32 buffer per kind (the same Parameter objects, the same optimizer; the state
    AdamW creates at its first step is created here). Returns the buffers, for a child process to map."""
    import torch

    params = inner.params
    total = sum(p.numel() for p in params)
    buffers = {k: torch.zeros(total, dtype=torch.float32).share_memory_() for k in ("weights", "exp_avg", "exp_avg_sq")}
    buffers["step"] = torch.zeros(len(params), dtype=torch.float32).share_memory_()
    offset = 0
    with torch.no_grad():
        for i, p in enumerate(params):
            n, state = p.numel(), inner.optimizer.state[p]
            weights = buffers["weights"][offset : offset + n].view_as(p)
            weights.copy_(p.data)
            p.data = weights
            for key in ("exp_avg", "exp_avg_sq"):
                view = buffers[key][offset : offset + n].view_as(p)
                if key in state:
                    view.copy_(state[key])
                state[key] = view
            buffers["step"][i] = float(state["step"]) if "step" in state else 0.0
            state["step"] = buffers["step"][i]
            offset += n
    return buffers


def map_inner_state(inner: Any, buffers: dict[str, Any]) -> None:
    """The child's side of `share_inner_state`: its inner loop's weights and AdamW state become views of `buffers`."""
    offset = 0
    for i, p in enumerate(inner.params):
        n = p.numel()
        view = {k: buffers[k][offset : offset + n].view_as(p) for k in ("weights", "exp_avg", "exp_avg_sq")}
        p.data = view.pop("weights")
        inner.optimizer.state[p] = {"step": buffers["step"][i], **view}
        offset += n


def can_share(inner: Any) -> bool:
    """Whether `share_inner_state` applies: fp32 weights on the CPU (what the inner loop keeps there)."""
    import torch

    return all(p.device.type == "cpu" and p.dtype == torch.float32 for p in inner.params)


class InnerStepProcess:
    """The peer's inner steps in a child process (CPU): `step(batch)` sends the batch and its optimizer step number,
    the child runs it in gated micro-batches on the weights and AdamW state it shares with the peer, and the loss
    comes back; the peer's schedule then moves on as if it had stepped itself. `stop()` ends it; a step cut short
    by the node's stop raises TrainerStopped, as a gated thread would."""

    def __init__(self, peer: Any, gate: Gate, max_threads: int, lowest_priority: bool = True) -> None:
        import torch.multiprocessing  # noqa: F401  (tensors travel to the child as shared-memory handles)

        self.peer = peer
        self.gate = gate
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        shared = share_inner_state(peer.inner)
        args = (peer.cfg.model_dump_json(), shared, gate, child_conn, max_threads, lowest_priority)
        self._proc = ctx.Process(target=_inner_child, args=args, name="swarm-trainer", daemon=True)
        self.priority = ""

    def start(self, timeout_s: float = 120.0) -> None:
        import atexit

        self._proc.start()
        self.gate.attach(self._proc.pid)
        atexit.register(self.gate.close)  # a stopped child must be continued before the interpreter joins it
        kind, self.priority = self._receive(timeout_s)
        if kind != "ready":
            raise RuntimeError(f"trainer process: unexpected first message {kind!r}")

    def _receive(self, timeout_s: float | None = None) -> Any:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._conn.poll(0.1):
            if not self._proc.is_alive() or self.gate.stopping:
                raise TrainerStopped(f"trainer process ended (exit code {self._proc.exitcode})")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"trainer process silent for {timeout_s} s")
        try:
            return self._conn.recv()
        except (EOFError, OSError) as err:
            raise TrainerStopped(f"trainer process ended: {err}") from err

    def step(self, batch: Any) -> float:
        inner = self.peer.inner
        number = inner.steps_done
        self._conn.send(("step", number, batch.numpy(), self.peer.micro_batch))
        kind, value = self._receive()
        if kind != "loss":
            raise RuntimeError(f"trainer process failed: {value}")
        inner.set_step(number + 1)  # the weights and AdamW state moved in shared memory; the schedule follows
        return value

    def evaluate(self, batches: list[Any]) -> float:
        """Mean eval loss of the shared (live) weights over `batches`, computed by the child one granted batch at a
        time, at its priority: what `InnerLoop.evaluate` returns in this process."""
        self._conn.send(("eval", [b.numpy() for b in batches]))
        kind, value = self._receive()
        if kind != "eval_loss":
            raise RuntimeError(f"trainer process failed: {value}")
        return value

    def cpu_s(self) -> float:
        """CPU seconds every thread of the child has run so far (0 where it cannot be read)."""
        return process_cpu_s(self._proc.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        import atexit

        self.gate.close()
        if self._proc.pid is None:
            return
        try:
            self._conn.send(("stop",))
        except OSError:
            pass
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout_s)
        atexit.unregister(self.gate.close)


def _inner_child(
    config_json: str, shared: dict[str, Any], gate: Gate, conn: Any, max_threads: int, lowest_priority: bool
) -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep, never spin on serving's cores
    priority = lower_priority() if lowest_priority else "normal"
    import torch

    from swarm.runtime.micro_trainer import exit_with_parent
    from training.config import TrainingConfig
    from training.inner import InnerLoop
    from training.model import load_train_model

    exit_with_parent()
    threads = max_threads
    torch.set_num_threads(threads)
    cfg = TrainingConfig.model_validate_json(config_json)
    built = load_train_model(cfg.model)
    inner = InnerLoop(built.model, cfg, built.ignored_label())
    map_inner_state(inner, shared)

    def run(micro_step: Any) -> None:
        def with_threads() -> None:
            nonlocal threads
            if gate.threads != threads:  # all cores while serving idles
                threads = gate.threads
                torch.set_num_threads(threads)
            micro_step()

        gate.run(with_threads)

    conn.send(("ready", priority))
    try:
        while True:
            message = conn.recv()
            if message[0] not in ("step", "eval"):
                return
            try:
                if message[0] == "eval":
                    conn.send(("eval_loss", _evaluate(inner, [torch.from_numpy(b) for b in message[1]], run)))
                    continue
                _, number, batch, micro_batch = message
                inner.set_step(number)
                loss = inner.step_in_micro_batches(torch.from_numpy(batch), micro_batch, run)
            except TrainerStopped:
                return
            except Exception as err:  # reported to the node's training thread, which fails visibly
                conn.send(("error", f"{type(err).__name__}: {err}"))
                return
            conn.send(("loss", loss))
    except (EOFError, OSError):
        return


def _evaluate(inner: Any, batches: list[Any], run: Any) -> float:
    """`InnerLoop.evaluate(batches)`, one granted piece per batch (the same mean, summed in the same order)."""
    losses: list[float] = []
    for batch in batches:
        run(lambda b=batch: losses.append(inner.evaluate([b])))
    return sum(losses) / len(losses)
