"""The arbiter between a node's serving engine and its training: training runs in micro-steps, each granted only
when online serving leaves room.

Order of classes (COSCHEDULE.md A.3): online serving, then rollouts near their deadline, then training, then
rollouts with time to spare. The engine publishes its slack (`serving.slack.Slack`); the arbiter grants the trainer
a micro-step when serving is idle (all `max_threads` threads) or when the step in flight leaves at least one
micro-step's time in its TPOT budget (one thread), and never while a rollout is late. An online request's arrival
revokes the grant at once, from the submitting thread; the micro-step in flight ends (it is sized to a quarter of
the tightest TPOT target) and the trainer waits. Yield latency = arrival to the end of that micro-step.
The grant travels through a `Gate` of multiprocessing primitives, so the trainer may be a thread or a child
process. This module knows the engine's slack and the gate, nothing about models or the network.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # config loading imports this module: no torch-importing serving modules at run time
    from serving.slack import Slack

log = logging.getLogger(__name__)
YIELD_WINDOW = 4096  # yield latencies kept for the percentiles


class CoscheduleConfig(BaseModel):
    """The `coschedule:` section: how training shares a node with serving."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="with serve and train on one node: gate training by serving's slack")
    micro_step_share: float = Field(
        0.25, gt=0, le=1.0, description="a training micro-step fits this share of the tightest TPOT target"
    )
    reserved_share: float = Field(
        0.2, ge=0, le=0.9, description="serving share announced as taken by training (higher announced TTFT)"
    )
    poll_ms: float = Field(2.0, gt=0, le=1000, description="how often the arbiter reads the engine's slack")
    harvest_in_step: bool = Field(
        False, description="also grant one-thread micro-steps beside online steps that leave room in their budget"
    )


class TrainerStopped(Exception):
    """The gate was closed while the trainer waited for a grant."""


class Gate:
    """Grant / revoke between an arbiter and one trainer (thread or process; pass it to the child at start)."""

    def __init__(self, ctx: Any = None) -> None:
        ctx = ctx or multiprocessing.get_context("spawn")
        self._grant = ctx.Event()
        self._lock = ctx.Lock()
        self.stop = ctx.Event()
        self._running = ctx.Value("b", 0, lock=False)
        self._micro_end = ctx.Value("d", 0.0, lock=False)
        self._threads = ctx.Value("i", 1, lock=False)
        self._micro_steps = ctx.Value("q", 0, lock=False)

    # ----- trainer side -----
    def run(self, micro_step: Callable[[], None]) -> None:
        """Run `micro_step` once granted; raise TrainerStopped when the gate closes first."""
        while True:
            if self.stop.is_set():
                raise TrainerStopped("gate closed")
            if self._grant.wait(0.1):
                with self._lock:
                    if self._grant.is_set():
                        self._running.value = 1
                        break
        try:
            micro_step()
        finally:
            with self._lock:
                self._running.value = 0
                self._micro_end.value = time.perf_counter()
                self._micro_steps.value += 1

    @property
    def threads(self) -> int:
        return self._threads.value

    # ----- arbiter side -----
    def grant(self, threads: int) -> None:
        self._threads.value = threads
        self._grant.set()

    def revoke(self) -> bool:
        """Withdraw the grant; True when a micro-step is in flight (it ends, then the trainer waits)."""
        with self._lock:
            self._grant.clear()
            return bool(self._running.value)

    @property
    def granted(self) -> bool:
        return self._grant.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.value

    @property
    def last_micro_end_s(self) -> float:
        return self._micro_end.value

    @property
    def micro_steps(self) -> int:
        return self._micro_steps.value

    def close(self) -> None:
        self.stop.set()
        self._grant.clear()


def decide(slack: Slack, tau_s: float, max_threads: int, harvest_in_step: bool) -> int:
    """Trainer threads to grant for this slack (0: none). Pure, so it is tested as logic."""
    if slack.offline_late:
        return 0  # a rollout near its deadline comes before training
    if slack.online_idle:
        return max_threads
    if harvest_in_step and slack.left_s >= tau_s:
        return 1
    return 0


class Arbiter:
    """Reads `slack()` every `poll_s`, grants or revokes the gate, and measures yield latencies. `on_arrival` is
    the engine's `on_online_arrival` hook."""

    def __init__(
        self,
        slack: Callable[[], Slack],
        gate: Gate,
        *,
        tau_s: float,
        max_threads: int,
        config: CoscheduleConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
        trainer_cpu_s: Callable[[], float] | None = None,
    ) -> None:
        """`trainer_cpu_s`: CPU seconds the trainer has used so far, where it can be read (a child process): each
        yield then also records how much CPU the trainer took between the arrival and its pause (at SCHED_IDLE a
        micro-step overlapping a busy engine mostly waits, so its end comes late while it takes little)."""
        self.slack = slack
        self.gate = gate
        self.tau_s = tau_s
        self.max_threads = max(1, max_threads)
        self.config = config or CoscheduleConfig()
        self.clock = clock
        self.yields_s: deque[float] = deque(maxlen=YIELD_WINDOW)
        self.yield_cpu_s: deque[float] = deque(maxlen=YIELD_WINDOW)
        self.trainer_cpu_s = trainer_cpu_s
        self.num_arrivals = 0
        self._pending: list[tuple[float, float]] = []  # (arrival, trainer CPU then) of revocations mid micro-step
        self._plock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_arrival(self, arrival_s: float) -> None:
        in_flight = self.gate.revoke()
        cpu = self.trainer_cpu_s() if in_flight and self.trainer_cpu_s is not None else 0.0
        with self._plock:
            self.num_arrivals += 1
            if in_flight:
                self._pending.append((arrival_s, cpu))

    def tick(self) -> None:
        threads = decide(self.slack(), self.tau_s, self.max_threads, self.config.harvest_in_step)
        if threads:
            self.gate.grant(threads)
        elif self.gate.granted:
            in_flight = self.gate.revoke()
            if in_flight:
                cpu = self.trainer_cpu_s() if self.trainer_cpu_s is not None else 0.0
                with self._plock:
                    self._pending.append((self.clock(), cpu))
        self._resolve_yields()

    def _resolve_yields(self) -> None:
        if not self._pending or not self.gate.paused:
            return
        end = self.gate.last_micro_end_s
        cpu = self.trainer_cpu_s() if self.trainer_cpu_s is not None else 0.0
        with self._plock:
            pending, self._pending = self._pending, []
        self.yields_s.extend(max(end - t, 0.0) for t, _ in pending)
        if self.trainer_cpu_s is not None:
            self.yield_cpu_s.extend(max(cpu - c, 0.0) for _, c in pending)

    def yield_p99_s(self, cpu: bool = False) -> float:
        """p99 of the yields: wall time from arrival to pause, or (`cpu`) the trainer's CPU time in between."""
        values = sorted(self.yield_cpu_s if cpu else self.yields_s)
        return values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)] if values else 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="coschedule-arbiter", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        poll_s = self.config.poll_ms / 1000.0
        while not self._stop.wait(poll_s):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.gate.close()


def lower_priority(tid: int = 0) -> str:
    """Put this process (or thread `tid`) at the lowest CPU priority: SCHED_IDLE where allowed, else nice 19.
    Returns which one it got, for the log and /healthz."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except (PermissionError, OSError) as err:
            log.warning("SCHED_IDLE not allowed (%s); training at nice 19 instead", err)
    try:
        if tid:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        else:
            os.nice(19 - os.nice(0))
        return "nice 19"
    except OSError as err:
        log.warning("cannot lower the training priority (%s): it competes with serving as an equal", err)
        return "normal"


def micro_batch_for(time_micro_s: Callable[[int], float], batch_size: int, tau_s: float) -> int:
    """Largest divisor of `batch_size` (powers of two first) whose measured micro-step fits `tau_s`; 1 when none
    does (the micro-step then overruns tau and the yield latency says by how much)."""
    best = 1
    size = 1
    while size <= batch_size:
        if batch_size % size == 0:
            if time_micro_s(size) > tau_s:
                break  # larger ones only take longer
            best = size
        size *= 2
    return best
