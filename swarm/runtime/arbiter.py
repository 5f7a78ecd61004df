"""The arbiter between a node's serving engine and its training: training runs in micro-steps, each granted only
when online serving leaves room.

Order of classes (COSCHEDULE.md A.3): online serving, then rollouts near their deadline, then training, then
rollouts with time to spare. The engine publishes its slack (`serving.slack.Slack`); the arbiter grants the trainer
a micro-step when serving is idle (all `max_threads` threads) or when the step in flight leaves at least one
micro-step's time in its TPOT budget (one thread), and never while a rollout is late. An online request's arrival
revokes the grant at once, from the submitting thread: a trainer process (the CPU case) is stopped by the kernel
where it is and continues that micro-step at its next grant; a trainer thread ends its micro-step in flight (sized
to a quarter of the tightest TPOT target) and waits. Yield latency = arrival to the trainer paused (stopped, or its
micro-step ended). The grant travels through a `Gate` of shared values, so the trainer may be a thread or a child
process. This module knows the engine's slack and the gate, nothing about models or the network.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
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
    """Grant / revoke between an arbiter and one trainer (thread or process; pass it to the child at start).

    Shared state is lock-free (plain shared values), so nothing the arbiter calls can wait on the trainer. A child
    process trainer is `attach`ed by pid: revoking a grant while it runs a micro-step stops the process at once
    (SIGSTOP; the kernel halts every one of its threads where it is), and the next grant continues it (SIGCONT)
    from there. A trainer thread cannot be stopped that way: its micro-step in flight runs to its end."""

    def __init__(self, ctx: Any = None, poll_s: float = 0.001) -> None:
        ctx = ctx or multiprocessing.get_context("spawn")
        self.poll_s = poll_s
        self._grant = ctx.Value("b", 0, lock=False)
        self._stop = ctx.Value("b", 0, lock=False)
        self._running = ctx.Value("b", 0, lock=False)
        self._micro_end = ctx.Value("d", 0.0, lock=False)
        self._threads = ctx.Value("i", 1, lock=False)
        self._micro_steps = ctx.Value("q", 0, lock=False)
        self._in_thread = ctx.Value("b", 0, lock=False)  # what runs now is a thread's (never stopped by a signal)
        self._init_arbiter_side()

    def _init_arbiter_side(self) -> None:
        self._pid = 0
        self._suspended = False
        self._suspended_at = 0.0
        self.suspensions = 0
        self._signal_lock = threading.Lock()  # the arrival hook and the arbiter's thread both revoke

    def __getstate__(self) -> dict:  # what a child process gets: the shared values, no arbiter-side state
        state = dict(self.__dict__)
        for key in ("_pid", "_suspended", "_suspended_at", "suspensions", "_signal_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_arbiter_side()

    # ----- trainer side -----
    def run(self, micro_step: Callable[[], None], *, in_thread: bool = False) -> None:
        """Run `micro_step` once granted; raise TrainerStopped when the gate closes first. `in_thread`: a piece of
        training work run by a thread of the arbiter's own process although a trainer process is attached (the
        training thread's evaluation, outer step or checkpoint): a revocation lets it end instead of stopping the
        process, and the yield is measured to its end."""
        while True:
            if self._stop.value:
                raise TrainerStopped("gate closed")
            if self._grant.value:
                self._in_thread.value = int(in_thread)
                self._running.value = 1
                if self._grant.value:  # re-read after announcing: a revoke in between sees us running
                    break
                self._running.value = 0
            time.sleep(self.poll_s)
        try:
            micro_step()
        finally:
            self._micro_end.value = time.perf_counter()
            self._micro_steps.value += 1
            self._running.value = 0

    @property
    def threads(self) -> int:
        return self._threads.value

    @property
    def stopping(self) -> bool:
        return bool(self._stop.value)

    # ----- arbiter side -----
    def attach(self, pid: int) -> None:
        """The trainer is the child process `pid`: revocations stop it at once."""
        self._pid = pid

    def grant(self, threads: int) -> None:
        self._threads.value = threads
        self._resume()
        self._grant.value = 1

    def revoke(self) -> bool:
        """Withdraw the grant; True when this caught a micro-step running (an attached process is stopped now,
        however it came to run; a thread's micro-step ends, then it waits)."""
        was_granted, self._grant.value = self._grant.value, 0
        if not self._running.value:
            return False
        if not self._pid or self._in_thread.value:
            return bool(was_granted)
        return self._suspend()

    def _suspend(self) -> bool:
        with self._signal_lock:
            if self._suspended:
                return False
            try:
                os.kill(self._pid, signal.SIGSTOP)
            except ProcessLookupError:
                return False
            self._suspended, self._suspended_at = True, time.perf_counter()
            self.suspensions += 1
            return True

    def _resume(self) -> None:
        with self._signal_lock:
            if not self._suspended:
                return
            self._suspended = False
            try:
                os.kill(self._pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    @property
    def granted(self) -> bool:
        return bool(self._grant.value)

    @property
    def paused(self) -> bool:
        """The trainer runs nothing: between micro-steps, or stopped."""
        return self._suspended or not self._running.value

    @property
    def paused_at_s(self) -> float:
        """When it paused last (perf_counter): its stop, else the end of its last micro-step."""
        return self._suspended_at if self._suspended else self._micro_end.value

    @property
    def micro_steps(self) -> int:
        return self._micro_steps.value

    def close(self) -> None:
        """Stop the trainer for good: it ends the micro-step in flight (continued if stopped) and then raises
        TrainerStopped."""
        self._stop.value = 1
        self._grant.value = 0
        self._resume()


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
        yield then also records how much CPU the trainer took between the revocation and its pause (a stopped
        process takes none; a thread's micro-step runs on to its end)."""
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
        caught = self.gate.revoke()  # first: a trainer process is stopped before anything else happens here
        with self._plock:
            self.num_arrivals += 1
        if caught:
            self._caught(arrival_s)

    def _caught(self, since_s: float) -> None:
        """A micro-step was running when the grant went: its yield is measured once the trainer pauses."""
        cpu = self.trainer_cpu_s() if self.trainer_cpu_s is not None else 0.0
        with self._plock:
            self._pending.append((since_s, cpu))

    def tick(self) -> None:
        threads = decide(self.slack(), self.tau_s, self.max_threads, self.config.harvest_in_step)
        if threads:
            self.gate.grant(threads)
        elif self.gate.revoke():  # every tick, also stopping a trainer that slipped into a micro-step meanwhile
            self._caught(self.clock())
        self._resolve_yields()

    def _resolve_yields(self) -> None:
        if not self._pending or not self.gate.paused:
            return
        end = self.gate.paused_at_s
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
    """Put this process (every thread it has now, and those they start later) or thread `tid` at the lowest CPU
    priority: SCHED_IDLE where allowed, else nice 19 (both are per thread on Linux). Returns which one it got, for
    the log and /healthz."""
    tids = [tid]
    if not tid:
        try:
            tids = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError:
            tids = [0]
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            for t in tids:
                os.sched_setscheduler(t, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except (PermissionError, OSError) as err:
            log.warning("SCHED_IDLE not allowed (%s); training at nice 19 instead", err)
    try:
        for t in tids:
            os.setpriority(os.PRIO_PROCESS, t, 19)
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
