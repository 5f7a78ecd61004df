"""Wires a node's training peer to its serving engine through the arbiter: `swarm` knows both, `serving` and
`training` never know each other.

The peer's inner steps run as micro-batches sized so one fits `micro_step_share` of the tightest TPOT target, each
granted by the arbiter from the engine's slack; an online request's arrival revokes the grant from the submitting
thread; the engine announces `reserved_share` of itself as taken, so routers send online work elsewhere while
training runs. The training thread drops itself to SCHED_IDLE (nice 19 where not allowed). In a node the trainer
is a thread of the serving process (the averager and checkpointing need the peer here); `swarm bench coschedule`
measures the same arbiter with the trainer as a child process (`swarm.runtime.micro_trainer`).
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from typing import Any

from protocols.messages import LOAD_PROBE_PROMPT_TOKENS
from swarm.runtime.arbiter import Arbiter, CoscheduleConfig, Gate, lower_priority, micro_batch_for

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
        # torch's thread count is per process: a trainer thread cannot follow the slack with its own, so it
        # is granted one thread's worth.
        self.arbiter = Arbiter(engine.slack, self.gate, tau_s=self.tau_s, max_threads=1, config=config)
        self.priority = "normal"

    def start(self) -> str:
        peer = self.peer
        batch = peer.next_batch()
        peer.micro_batch = micro_batch_for(lambda n: time_backward(peer.inner, batch[:n]), len(batch), self.tau_s)
        peer.micro_gate = self._on_gpu_stream(self.gate.run)
        self.engine.on_online_arrival = self.arbiter.on_arrival
        self.engine.reserved_share = self.config.reserved_share
        self.arbiter.start()
        return (f"training co-scheduled with serving: micro-batch {peer.micro_batch} of {len(batch)} "
                f"(tau {1000 * self.tau_s:.1f} ms), reserved share {self.config.reserved_share:.2f}")  # fmt: skip

    def _on_gpu_stream(self, run: Any) -> Any:
        """On a GPU: each granted micro-step on a low-priority CUDA stream (serving's is the highest), waited for
        before the step counts as done, so a revoked trainer has nothing left queued on the device."""
        import torch

        if not torch.cuda.is_available() or self.peer.inner.accelerator.device.type != "cuda":
            return run
        stream = torch.cuda.Stream(self.peer.inner.accelerator.device, priority=0)

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
