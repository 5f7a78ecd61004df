"""What each role of this node is doing, for `/metrics` and for the periodic status line.

Serving figures use vLLM's metric names (`vllm:time_to_first_token_seconds`, `vllm:num_requests_running`, ...)
so dashboards and alerts written for vLLM work unchanged; training figures are `swarm_train_*`, RL figures
`swarm_rl_*`. An RL role exposes its figures by having an ``rl_counters()`` method returning `RlCounters`.
Reads the roles' state only; knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from protocols.errors import SwarmError
from serving.stats import Histogram

log = logging.getLogger(__name__)


@dataclass
class RlCounters:
    """What an RL role reports: its round, the latest mean reward, and rollout groups received from peers, used,
    and rejected by reason (the receiver's reasons: bad score, stale round, oversized, ...)."""

    round: int = 0
    reward: float | None = None
    groups_received: int = 0
    groups_used: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    groups_filtered: int = 0  # peers' groups without reward variance: dropped, no strike
    late: dict[str, int] = field(default_factory=dict)  # peers' groups outside the round window, by reason
    bytes_in: int = 0  # rollout batch bytes received
    bytes_out: int = 0  # rollout batch bytes published


def _histogram(name: str, doc: str, hist: Histogram, model: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["model_name"])
    buckets = [("+Inf" if math.isinf(b) else repr(b), n) for b, n in hist.cumulative()]
    family.add_metric([model], buckets, sum_value=hist.total)
    return family


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, doc: str, values: dict[str, float], label: str, extra: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[*extra, label])
    for key, value in sorted(values.items()):
        family.add_metric([*extra.values(), key], value)
    return family


def serving_families(engine: Any) -> Iterator[Metric]:
    """vLLM-named figures of a running engine."""
    model = {"model_name": engine.model_id}
    stats = engine.stats.snapshot()
    load, counters = engine.load(), engine.counters()
    yield _histogram("vllm:time_to_first_token_seconds", "Time to first token.", stats.ttft, engine.model_id)
    yield _histogram("vllm:request_time_per_output_token_seconds", "Time per output token, per request.",
                     stats.tpot, engine.model_id)  # fmt: skip
    yield _histogram("vllm:inter_token_latency_seconds", "Time between two tokens of a request.",
                     stats.inter_token, engine.model_id)  # fmt: skip
    # The same figure under its older vLLM name, which vLLM's own example Grafana dashboard still queries.
    yield _histogram("vllm:time_per_output_token_seconds", "Time between two tokens of a request (older name).",
                     stats.inter_token, engine.model_id)  # fmt: skip
    yield _histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", stats.e2e, engine.model_id)
    yield _gauge("vllm:num_requests_running", "Requests in the running batch.", load.running, model)
    yield _gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.", load.waiting, model)
    used = counters["kv_blocks"] - counters["kv_blocks_free"]
    yield _gauge("vllm:kv_cache_usage_perc", "KV-cache usage (1 = full).", used / max(counters["kv_blocks"], 1), model)
    yield _single_counter("vllm:num_preemptions", "Preempted requests.", counters["preemptions"], model)
    yield _single_counter("vllm:prompt_tokens", "Prompt tokens of finished requests.", stats.prompt_tokens, model)
    yield _single_counter("vllm:generation_tokens", "Generated tokens.", stats.generation_tokens, model)
    yield _counter("vllm:request_success", "Finished requests, by finish reason.", stats.finished,
                   "finished_reason", model)  # fmt: skip
    yield _counter("swarm_serving_refused", "Requests the engine refused, by error code.", stats.refused, "code", model)
    yield _counter("swarm_serving_slo", "Finished requests with SLO targets, by whether they met them.", stats.slo,
                   "outcome", model)  # fmt: skip


def _single_counter(name: str, doc: str, value: float, labels: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def training_families(role: Any) -> Iterator[Metric]:
    """`swarm_train_*` figures of a training role whose peer is set up."""
    status, counters = role.peer.status, role.averager.counters
    yield _gauge("swarm_train_round", "Averaging rounds this peer has completed.", status.round_index)
    yield _gauge("swarm_train_step", "Inner optimizer steps taken.", status.step)
    for name, value, doc in (("swarm_train_loss", status.loss, "Training loss of the latest inner step."),
                             ("swarm_train_eval_loss", status.eval_loss, "Latest evaluation loss.")):  # fmt: skip
        if math.isfinite(value):
            yield _gauge(name, doc, value)
    bytes_averaged = {"sent": counters.bytes_sent, "received": counters.bytes_received}
    yield _counter("swarm_train_bytes_averaged", "Bytes the averaging process moved.", bytes_averaged, "direction", {})
    exchanges = {"ok": status.exchanges_ok, "failed": status.exchanges_failed, "alone": status.rounds_alone}
    yield _counter("swarm_train_exchanges", "Averaging exchanges, by outcome (alone: no other training peer known,"
                   " the local update applied at once).", exchanges, "outcome", {})  # fmt: skip
    yield _single_counter("swarm_train_resyncs", "Rounds after which this peer took a group member's state.",
                          status.resyncs, {})  # fmt: skip
    yield _single_counter("swarm_train_averager_restarts", "Averaging processes started again.", counters.restarts, {})
    co = getattr(role, "coscheduled", None)
    if co is not None:  # training shares this node's serving engine through the arbiter
        yield _single_counter("swarm_coschedule_micro_steps", "Training micro-steps granted beside serving.",
                              co.gate.micro_steps, {})  # fmt: skip
        yield _single_counter("swarm_coschedule_online_arrivals", "Online requests that revoked training's grant.",
                              co.arbiter.num_arrivals, {})  # fmt: skip
        yield _gauge("swarm_coschedule_yield_p99_seconds", "Arrival to training paused, p99 of recent arrivals.",
                     co.arbiter.yield_p99_s())  # fmt: skip


def rl_families(rl: RlCounters) -> Iterator[Metric]:
    """`swarm_rl_*` figures from an RL role's counters."""
    yield _gauge("swarm_rl_round", "RL rounds this peer has completed.", rl.round)
    yield _single_counter("swarm_rl_rounds", "RL rounds completed.", rl.round, {})
    if rl.reward is not None and math.isfinite(rl.reward):
        yield _gauge("swarm_rl_reward", "Mean reward of the latest RL round.", rl.reward)
    yield _single_counter("swarm_rl_groups_received", "Rollout groups received from peers.", rl.groups_received, {})
    yield _single_counter("swarm_rl_groups_filtered", "Peers' groups without reward variance.", rl.groups_filtered,
                          {})  # fmt: skip
    yield _single_counter("swarm_rl_groups_used", "Rollout groups that passed the checks and were used.",
                          rl.groups_used, {})  # fmt: skip
    yield _counter("swarm_rl_groups_rejected", "Rollout groups rejected, by reason.", rl.rejected, "reason", {})
    yield _counter("swarm_rl_groups_late", "Peers' groups outside the round window, by reason.", rl.late, "reason",
                   {})  # fmt: skip
    yield _single_counter("swarm_rl_bytes_in", "Rollout batch bytes received.", rl.bytes_in, {})
    yield _single_counter("swarm_rl_bytes_out", "Rollout batch bytes published.", rl.bytes_out, {})


def _active(role: Any) -> str | None:
    """Which figures a live role has now: "serve", "train", "rl", or None (not ready, failed, or none). By the
    role's name: an RL role may hold an engine of its own, whose figures are its rollouts', not serving's."""
    if role.failure:
        return None
    if role.name == "serve" and getattr(role, "engine", None) is not None:
        return "serve"
    if role.name == "train" and getattr(role, "averager", None) is not None and getattr(role, "peer", None) is not None:
        return "train"
    if role.name == "rl" and callable(getattr(role, "rl_counters", None)):
        return "rl"
    return None


class RoleCollector:
    """Exposes every live role's figures to prometheus_client at scrape time."""

    def __init__(self, roles: list[Any]) -> None:
        self.roles = roles

    def collect(self) -> Iterator[Metric]:
        for role in self.roles:
            try:  # a role stopping during the scrape has no figures: the rest of the page still renders
                families = list(_families(role))
            except SwarmError as err:
                log.debug("no figures from role %s: %s", role.name, err)
                continue
            yield from families


def _families(role: Any) -> Iterator[Metric]:
    kind = _active(role)
    if kind == "serve":
        yield from serving_families(role.engine)
    elif kind == "train":
        yield from training_families(role)
    elif kind == "rl":
        yield from rl_families(role.rl_counters())


class StatusLine:
    """One line per live role, as vLLM logs it: throughput over the last interval, running, waiting and KV use
    for serving; round, step and loss for training; round, reward and rollout groups for RL."""

    def __init__(self, roles: list[Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.roles = roles
        self.clock = clock
        self._last: tuple[float, int, int] | None = None  # when, prompt tokens, generated tokens

    def lines(self) -> list[str]:
        out = []
        for role in self.roles:
            kind = _active(role)
            try:
                if kind == "serve":
                    out.append(self._serving(role.engine))
                elif kind == "train":
                    out.append(_training(role))
                elif kind == "rl":
                    out.append(_rl(role.rl_counters()))
            except SwarmError as err:  # the role stopped between the check and the read
                log.debug("no status from role %s: %s", role.name, err)
        return out

    def _serving(self, engine: Any) -> str:
        stats, load, counters = engine.stats.snapshot(), engine.load(), engine.counters()
        now = self.clock()
        prompt_tps = gen_tps = 0.0
        if self._last is not None and now > self._last[0]:
            span = now - self._last[0]
            prompt_tps = (stats.prompt_tokens - self._last[1]) / span
            gen_tps = (stats.generation_tokens - self._last[2]) / span
        self._last = (now, stats.prompt_tokens, stats.generation_tokens)
        kv = 100 * (counters["kv_blocks"] - counters["kv_blocks_free"]) / max(counters["kv_blocks"], 1)
        return (f"serving: prompt throughput {prompt_tps:.1f} tokens/s, generation throughput {gen_tps:.1f} tokens/s,"
                f" running {load.running} reqs, waiting {load.waiting} reqs, KV cache usage {kv:.1f}%,"
                f" {sum(stats.finished.values())} requests finished")  # fmt: skip


def _training(role: Any) -> str:
    status = role.peer.status
    loss = f"{status.loss:.4f}" if math.isfinite(status.loss) else "-"
    eval_loss = f"{status.eval_loss:.4f}" if math.isfinite(status.eval_loss) else "-"
    return (f"training: round {status.round_index}, step {status.step}, loss {loss}, eval loss {eval_loss},"
            f" exchanges {status.exchanges_ok} ok / {status.exchanges_failed} failed"
            + (f" / {status.rounds_alone} alone" if status.rounds_alone else ""))  # fmt: skip


def _rl(rl: RlCounters) -> str:
    reward = f"{rl.reward:.4f}" if rl.reward is not None and math.isfinite(rl.reward) else "-"
    rejected = sum(rl.rejected.values())
    return (f"rl: round {rl.round}, reward {reward}, groups received {rl.groups_received},"
            f" used {rl.groups_used}, rejected {rejected}")  # fmt: skip


async def log_status(roles: list[Any], interval_s: float) -> None:
    """Log every live role's status line every `interval_s` seconds, for as long as the node runs."""
    status = StatusLine(roles)
    while True:
        await trio.sleep(interval_s)
        try:
            lines = status.lines()
        except Exception as err:  # a status line is not worth the node: say so and try again next interval
            log.warning("status line failed: %s", err)
            log.debug("status line failure", exc_info=err)
            continue
        for line in lines:
            log.info("%s", line)
