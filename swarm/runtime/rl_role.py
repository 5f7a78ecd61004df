"""The `rl` role: rollout sharing with GRPO on a LoRA adapter, beside (or without) the `serve` role.

Wires the pieces: the serving engine samples rollouts at low priority (the `serve` role's engine when the node
serves, else one of its own) and serves each new policy after a step; the round loop (training.rl_loop) runs in
a worker thread; gossip brings peers' batches through the gate's topic validator. Round, reward and group counts
go into the announce and `/metrics`. Knows the node, the engine and the training API.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from pathlib import Path
from typing import Any

import torch
import trio

from protocols import PeerAnnounce
from protocols.ids import ROLLOUTS_TOPIC, topic
from protocols.messages import RLState
from swarm.runtime.role_metrics import RlCounters
from swarm.runtime.roles import Role, RoleNotReady

log = logging.getLogger(__name__)
OVERLOADED_RETRY_S = 0.05
SAMPLE_TIMEOUT_S = 600.0


class EngineSampler:
    """`training.rl_loop.Sampler` over the serving engine: n samples per prompt forked after one prefill."""

    def __init__(self, engine: Any, max_new_tokens: int, priority: int) -> None:
        self.engine, self.max_new_tokens, self.priority = engine, max_new_tokens, priority

    @property
    def weights_version(self) -> int:
        return self.engine.weights_version

    def sample(self, prompts: list[list[int]], n: int, seeds: list[int], temperature: float) -> list[list[Any]]:
        from serving.errors import OverloadedError
        from serving.request import DoneEvent, GenerateParams, TokenEvent
        from training.rl_loop import Completion

        events: queue.Queue = queue.Queue()
        ids = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            params = GenerateParams(prompt_token_ids=prompt, max_new_tokens=self.max_new_tokens, n=n,
                                    temperature=temperature, seed=seed if temperature > 0 else None,
                                    priority=self.priority, logprobs=0,
                                    request_id=f"rl-{uuid.uuid4().hex}")  # fmt: skip
            while True:
                try:
                    self.engine.submit(params, events.put)
                    break
                except OverloadedError:  # serving traffic comes first: wait for room
                    threading.Event().wait(OVERLOADED_RETRY_S)
            ids.append(params.request_id)
        index = {rid: i for i, rid in enumerate(ids)}
        toks = [[[] for _ in range(n)] for _ in ids]
        text = [[[] for _ in range(n)] for _ in ids]
        lps = [[0.0] * n for _ in ids]
        reasons: list[list[str] | None] = [None] * len(ids)
        while any(r is None for r in reasons):
            event = events.get(timeout=SAMPLE_TIMEOUT_S)
            i = index[event.request_id]
            if isinstance(event, TokenEvent):
                toks[i][event.index].extend(event.token_ids)
                text[i][event.index].append(event.text)
                lps[i][event.index] += sum(lp.logprob for lp in event.logprobs or [])
            elif isinstance(event, DoneEvent):
                if event.error:
                    raise RuntimeError(f"rollout generation failed: {event.error}")
                reasons[i] = event.finish_reasons or [event.finish_reason]
        eos = self.engine.eos_token_ids
        return [[Completion([t for t in toks[i][j] if t not in eos], "".join(text[i][j]), reasons[i][j] == "stop",
                            lps[i][j]) for j in range(n)] for i in range(len(ids))]  # fmt: skip

    def swap(self, version: int, deltas: dict[str, torch.Tensor]) -> None:
        self.engine.swap_weights(version, deltas)


class RLRole(Role):
    """Runs RL rounds until the node stops (or `rl.max_rounds`)."""

    name = "rl"

    def __init__(self, config: Any, node: Any, device: Any = None) -> None:
        """`device` (a torch.device): where this role's own engine runs when the node serves nothing (None: as
        `serving.device` says)."""
        if device is not None:
            config = config.model_copy(update={"serving": config.serving.model_copy(update={"device": str(device)})})
        self.config, self.node, self.device = config, node, device
        self.cfg = config.rl
        self.topic = topic(config.network.swarm_id, ROLLOUTS_TOPIC)
        self.engine: Any = None
        self.own_engine = False
        self.worker: Any = None
        self.counters: Any = None
        self._stop = threading.Event()

    def _rl_peers(self) -> set[str]:
        return {e.announce.peer_id for e in self.node.membership.entries() if "rl" in e.announce.roles}

    def _peer_rounds(self) -> list[int]:
        return [e.announce.rl.round for e in self.node.membership.entries()
                if "rl" in e.announce.roles and e.announce.rl is not None]  # fmt: skip

    def _setup(self) -> Any:
        from serving.model import load_model
        from training.grpo import LoraPolicy
        from training.rl_loop import RLWorker
        from training.rl_select import RLCounters, RolloutGate
        from training.rl_tasks import TaskSet

        cfg, engine = self.cfg, self.engine
        tasks = TaskSet(cfg.tasks)
        loaded = load_model(self.config.serving.model, self.config.serving.model_seed)  # the trainer's fp32 copy
        policy = LoraPolicy(loaded.hf_model, cfg, pad_id=int(loaded.tokenizer.pad_token_id or 0))
        self.counters = RLCounters()
        gate = RolloutGate(cfg, tasks, self.node.peer_id, engine.model_hash, self.counters)
        ckpt = cfg.checkpoint_dir or Path.home() / ".cache" / "swarm" / "rl" / self.node.peer_id
        sampler = EngineSampler(engine, cfg.max_new_tokens, cfg.priority)
        swarm_id = self.config.network.swarm_id
        return RLWorker(cfg, tasks, policy, sampler, loaded.tokenizer, swarm_id=swarm_id, peer_id=self.node.peer_id,
                        model_hash=engine.model_hash, gate=gate, counters=self.counters, publish=self._publish,
                        rl_peers=self._rl_peers, checkpoint_dir=Path(ckpt), peer_rounds=self._peer_rounds)  # fmt: skip

    def _publish(self, data: bytes) -> None:
        trio.from_thread.run(self.node.host.publish, self.topic, data)

    async def _start_engine(self) -> None:
        serve = self.node.serve_role
        if serve is not None and serve.engine is not None:
            self.engine = serve.engine
            return
        from serving.engine import Engine

        engine = Engine(self.config.serving)
        await trio.to_thread.run_sync(engine.start)
        self.engine, self.own_engine = engine, True

    async def _await_peers(self) -> None:
        """Round 0 waits (bounded) for `start_peers` other rl peers, so a bench's first rounds already share."""
        with trio.move_on_after(self.cfg.start_wait_s):
            while len(self._rl_peers() - {self.node.peer_id}) < self.cfg.start_peers:
                await trio.sleep(0.2)

    async def _drain(self, channel: trio.MemoryReceiveChannel) -> None:
        async for _ in channel:  # the gate kept what it accepted; the channel only has to be emptied
            pass

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._start_engine()
        try:
            self.worker = await trio.to_thread.run_sync(self._setup)
            self.node.host.set_topic_validator(self.topic, self.worker.gate.admit)
            async with self.node.host.subscribe(self.topic) as channel, trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, channel)
                log.info("rl: %d task(s), I=%d J=%d G=%d, from round %d", len(self.cfg.tasks), self.cfg.local_groups,
                         self.cfg.external_groups, self.cfg.num_generations, self.worker.round)  # fmt: skip
                task_status.started()
                await self._await_peers()
                await trio.to_thread.run_sync(self.worker.run, self._stop.is_set, abandon_on_cancel=True)
                log.info("rl: reached max_rounds=%s", self.cfg.max_rounds)
                await trio.sleep_forever()
        finally:
            self._stop.set()
            if self.own_engine:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.engine.stop, "node shutting down")

    def fill_announce(self, announce: PeerAnnounce) -> None:
        c = self.counters
        if c is None:
            return
        with c.lock:
            announce.rl = RLState(round=c.rounds, mean_reward=float(c.mean_reward), groups_received=c.groups_received,
                                  groups_rejected=c.groups_rejected, groups_used=c.groups_used)  # fmt: skip

    def rl_counters(self) -> RlCounters:
        """This role's figures for `/metrics` (`swarm_rl_*`), the status line and the dashboard."""
        c = self.counters
        if c is None:
            raise RoleNotReady("rl: no round loop yet")
        with c.lock:
            return RlCounters(
                round=c.rounds, reward=float(c.mean_reward), groups_received=c.groups_received,
                groups_used=c.groups_used, rejected=dict(c.rejected), groups_filtered=c.groups_filtered,
                late=dict(c.late), bytes_in=c.bytes_in, bytes_out=c.bytes_out,
            )  # fmt: skip
