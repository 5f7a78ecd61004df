"""The arbiter's decisions, the grant/revoke protocol with a trainer thread and a trainer process (stopped where
it is), micro-batch sizing and the OS priority of the trainer. Counts and events only: no assertion on how long
anything took."""

from __future__ import annotations

import math
import multiprocessing
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from serving.slack import Slack
from swarm.runtime.arbiter import Arbiter, CoscheduleConfig, Gate, TrainerStopped, decide, micro_batch_for

TAU = 0.006


def test_training_gets_every_thread_when_serving_idles_and_nothing_when_a_rollout_is_late() -> None:
    assert decide(Slack(online_idle=True), TAU, 4, harvest_in_step=False) == 4
    assert decide(Slack(online_idle=True, offline_late=True), TAU, 4, harvest_in_step=False) == 0
    busy_with_room = Slack(online_idle=False, left_s=2 * TAU)
    assert decide(busy_with_room, TAU, 4, harvest_in_step=False) == 0
    assert decide(busy_with_room, TAU, 4, harvest_in_step=True) == 1  # one thread beside the step
    assert decide(Slack(online_idle=False, left_s=TAU / 2), TAU, 4, harvest_in_step=True) == 0


class FakeTrainer:
    """Micro-steps that each wait for the test's go-ahead, so the test decides when one is in flight; `in_thread`:
    the training thread's own pieces (an outer step, a checkpoint) beside an attached trainer process."""

    def __init__(self, gate: Gate, in_thread: bool = False) -> None:
        self.gate, self.in_thread = gate, in_thread
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.done = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _step(self) -> None:
        self.entered.release()
        assert self.release.acquire(timeout=30)
        self.done += 1

    def _loop(self) -> None:
        try:
            while True:
                self.gate.run(self._step, in_thread=self.in_thread)
        except TrainerStopped:
            self.stopped.set()


def test_an_arrival_revokes_the_grant_the_step_in_flight_ends_and_its_yield_is_measured() -> None:
    slack = [Slack(online_idle=True)]
    gate = Gate()
    arbiter = Arbiter(lambda: slack[0], gate, tau_s=TAU, max_threads=2, config=CoscheduleConfig())
    trainer = FakeTrainer(gate)
    arbiter.tick()
    assert gate.granted and gate.threads == 2
    assert trainer.entered.acquire(timeout=30)  # a micro-step is in flight
    arbiter.on_arrival(arrival_s=0.0)  # an online request: the engine marks itself busy and calls the hook
    slack[0] = Slack(online_idle=False, left_s=0.0)
    assert not gate.granted and arbiter.num_arrivals == 1
    arbiter.tick()
    assert not arbiter.yields_s  # still in flight: nothing to measure yet
    trainer.release.release()
    while not gate.paused:
        threading.Event().wait(0.001)
    arbiter.tick()
    assert len(arbiter.yields_s) == 1 and arbiter.yields_s[0] > 0  # arrival (t=0) to the micro-step's end
    assert trainer.done == 1 and not gate.granted
    slack[0] = Slack(online_idle=True)  # serving idle again: the next micro-step is granted
    arbiter.tick()
    assert trainer.entered.acquire(timeout=30)
    trainer.release.release()
    gate.close()
    assert trainer.stopped.wait(30)
    assert trainer.done == 2


def test_an_arrival_while_the_trainer_waits_costs_no_yield() -> None:
    gate = Gate()
    arbiter = Arbiter(lambda: Slack(online_idle=False, left_s=0.0), gate, tau_s=TAU, max_threads=1)
    arbiter.on_arrival(1.0)
    arbiter.tick()
    assert arbiter.num_arrivals == 1 and not arbiter.yields_s and arbiter.yield_p99_s() == 0.0


def test_micro_batch_is_the_largest_divisor_that_fits_tau() -> None:
    per_row = {1: 0.002, 2: 0.004, 4: 0.008, 8: 0.016}
    asked: list[int] = []

    def timing(n: int) -> float:
        asked.append(n)
        return per_row[n]

    assert micro_batch_for(timing, 8, TAU) == 2
    assert asked == [1, 2, 4]  # stops at the first that does not fit
    assert micro_batch_for(lambda n: 1.0, 8, TAU) == 1  # nothing fits: one row, and the yield shows the overrun
    assert micro_batch_for(lambda n: 0.0, 6, TAU) == 2  # powers of two that divide 6


def test_the_trainer_runs_at_the_lowest_os_priority() -> None:
    code = (
        "import os; from swarm.runtime.arbiter import lower_priority; got = lower_priority(); "
        "idle = os.sched_getscheduler(0) == os.SCHED_IDLE if hasattr(os, 'SCHED_IDLE') else False; "
        "print(got, idle, os.nice(0))"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    got, idle, nice = out.stdout.split(" ", 2)[0], *out.stdout.rsplit(" ", 2)[1:]
    if got == "SCHED_IDLE":
        assert idle == "True"
    else:
        assert got.startswith("nice") and int(nice) == 19


@pytest.mark.slow
def test_micro_stepped_training_is_the_same_whatever_the_grants(tmp_path) -> None:
    """Two trainer processes on the same spec, one granted throughout, one granted and revoked in turns: the same
    steps see the same batches and reach the same eval loss (the bench's train_loss_ratio, as logic)."""
    from swarm.runtime.micro_trainer import TrainerProcess, TrainerSpec
    from training.config import ModelShape, TrainingConfig

    cfg = TrainingConfig(model=ModelShape(hidden_size=32, intermediate_size=64, num_layers=1), batch_size=4,
                         seq_len=32, warmup_steps=1, total_steps=100, max_corpus_bytes=200_000)  # fmt: skip
    spec = TrainerSpec(cfg.model_dump_json(), TAU, 1, micro_batch=2, eval_every=2, max_steps=4, lower_priority=False)
    gates = [Gate(), Gate()]
    trainers = [TrainerProcess(spec, gate) for gate in gates]
    for trainer in trainers:  # both start at once: their imports overlap
        trainer.start()
    for trainer, gate in zip(trainers, gates, strict=True):
        trainer.wait_ready()
        gate.grant(1)
    plain, toggling = trainers
    turns = 0
    while (plain.steps < 4 or toggling.steps < 4) and turns < 100_000:
        gates[1].revoke()  # the second trainer is paused and granted again all the time
        gates[1].grant(1)
        toggling.poll(0.01)
        turns += 1
    for trainer in trainers:
        while 4 not in trainer.report.evals and turns < 200_000:
            trainer.poll(0.05)
            turns += 1
    reports = [trainer.stop() for trainer in trainers]
    plain, toggled = reports
    assert sorted(plain.evals) == sorted(toggled.evals) == [2, 4]
    for step in (2, 4):
        assert math.isclose(plain.evals[step], toggled.evals[step], rel_tol=1e-5)
    assert plain.losses == pytest.approx(toggled.losses, rel=1e-5)


def test_the_trainers_cpu_time_between_arrival_and_pause_is_recorded() -> None:
    cpu = [5.0]
    gate = Gate()
    arbiter = Arbiter(lambda: Slack(online_idle=True), gate, tau_s=TAU, max_threads=1, trainer_cpu_s=lambda: cpu[0])
    trainer = FakeTrainer(gate)
    arbiter.tick()
    assert trainer.entered.acquire(timeout=30)
    arbiter.on_arrival(arrival_s=0.0)
    cpu[0] = 5.002  # the trainer ran 2 ms more before its micro-step ended
    trainer.release.release()
    while not gate.paused:
        threading.Event().wait(0.001)
    arbiter.slack = lambda: Slack(online_idle=False, left_s=0.0)
    arbiter.tick()
    assert list(arbiter.yield_cpu_s) == pytest.approx([0.002])
    assert arbiter.yield_p99_s(cpu=True) == pytest.approx(0.002)
    gate.close()
    assert trainer.stopped.wait(30)


def _spinning_trainer(gate: Gate, counter: Any, finish: Any) -> None:
    """A trainer process whose micro-step counts until told to finish: it is in flight for as long as a test likes."""

    def step() -> None:
        while not finish.value:
            counter.value += 1

    try:
        while True:
            gate.run(step)
    except TrainerStopped:
        pass


def _start_spinning_trainer():
    """A spinning trainer child attached to a fresh gate: (gate, step counter, finish flag, process)."""
    ctx = multiprocessing.get_context("spawn")
    gate = Gate(ctx)
    counter, finish = ctx.Value("q", 0, lock=False), ctx.Value("b", 0, lock=False)
    proc = ctx.Process(target=_spinning_trainer, args=(gate, counter, finish), daemon=True)
    proc.start()
    gate.attach(proc.pid)
    return gate, counter, finish, proc


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_a_revoked_trainer_process_stops_where_it_is_and_continues_at_its_next_grant() -> None:
    gate, counter, finish, proc = _start_spinning_trainer()
    try:
        arbiter = Arbiter(lambda: Slack(online_idle=True), gate, tau_s=TAU, max_threads=1)
        arbiter.tick()
        _wait(lambda: counter.value > 0)  # a micro-step is in flight
        arbiter.on_arrival(arrival_s=0.0)
        assert not gate.granted and gate.paused and gate.suspensions == 1
        _wait(lambda: _state(proc.pid) == "T")  # the kernel stopped it mid micro-step
        assert len(arbiter.yields_s) == 0
        arbiter.slack = lambda: Slack(online_idle=False, left_s=0.0)
        arbiter.tick()  # the yield resolves at once: the trainer is paused although its micro-step is unfinished
        assert len(arbiter.yields_s) == 1 and gate.micro_steps == 0
        frozen = counter.value
        _wait(lambda: True, polls=20)
        assert counter.value == frozen  # stopped means no progress at all
        arbiter.on_arrival(arrival_s=1.0)  # already stopped: nothing more to yield
        assert gate.suspensions == 1 and len(arbiter.yields_s) == 1
        finish.value = 1
        arbiter.slack = lambda: Slack(online_idle=True)
        arbiter.tick()  # granted again: the same micro-step continues and ends
        _wait(lambda: gate.micro_steps >= 1)  # (and the next ones, which end at once)
        assert counter.value >= frozen
        gate.close()  # continues a trainer stopped mid-step so that it can end
        proc.join(30)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()


def test_closing_a_stopped_trainer_process_lets_it_exit() -> None:
    gate, counter, finish, proc = _start_spinning_trainer()
    try:
        gate.grant(1)
        _wait(lambda: counter.value > 0)
        assert gate.revoke() and gate.suspensions == 1
        finish.value = 1
        gate.close()
        proc.join(30)
        assert proc.exitcode == 0 and gate.micro_steps == 1
    finally:
        if proc.is_alive():
            proc.kill()


def _wait(cond: Any, polls: int = 30_000) -> None:
    for _ in range(polls):
        if cond():
            return
        threading.Event().wait(0.001)
    raise AssertionError("condition not reached")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads process states from /proc")
def test_a_piece_of_the_training_thread_ends_when_revoked_and_the_trainer_process_is_not_stopped() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a trainer process between steps
    try:
        gate = Gate()
        gate.attach(idle.pid)
        arbiter = Arbiter(lambda: Slack(online_idle=True), gate, tau_s=TAU, max_threads=1)
        piece = FakeTrainer(gate, in_thread=True)
        arbiter.tick()
        assert piece.entered.acquire(timeout=30)  # granted: the piece runs
        arbiter.on_arrival(arrival_s=0.0)
        assert not gate.granted and gate.suspensions == 0  # no SIGSTOP for a thread's piece
        assert _state(idle.pid) != "T"
        arbiter.slack = lambda: Slack(online_idle=False, left_s=0.0)
        arbiter.tick()
        assert not arbiter.yields_s and not gate.paused  # the piece still runs: its yield is not over
        piece.release.release()
        _wait(lambda: gate.paused)
        arbiter.tick()
        assert len(arbiter.yields_s) == 1 and piece.done == 1  # measured to the piece's end
        assert gate.micro_steps == 1 and gate.suspensions == 0
        gate.close()
        piece.thread.join(30)
        assert not piece.thread.is_alive()
    finally:
        idle.kill()
        idle.wait(30)
