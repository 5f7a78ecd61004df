"""The `train` role: low-communication training (DiLoCo / NoLoCo / streaming) beside the host.

The training peer runs in a worker thread; its hivemind averager runs in its own process (comms.averaging), whose
DHT is bootstrapped from the hivemind addresses other training peers put in their announces. Round, step and
loss go into this node's announce; averaging bytes into its metrics. Knows the node and the training API.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from protocols import PeerAnnounce, TrainingState
from swarm.runtime.roles import Role

log = logging.getLogger(__name__)


class AveragerRestarts:
    """Starts a dead averaging process again (it is killed when it misses a deadline, and may crash), so the peer
    rejoins its group rather than training alone. A dead process is restarted at once; a failed start is retried
    after `backoff_s`, doubled after each further consecutive failure; past `max_failures` consecutive failures
    it gives up with an `AveragingError` (the role then fails, visibly). `initial_peers` gives the averaging
    addresses the swarm gossips now (those the process started with may be gone)."""

    def __init__(
        self,
        averager: Any,
        initial_peers: Callable[[], list[str]],
        *,
        max_failures: int,
        backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.averager = averager
        self.initial_peers = initial_peers
        self.max_failures = max_failures
        self.backoff_s = backoff_s
        self.clock = clock
        self.failures = 0  # consecutive failed starts
        self._next_try = 0.0

    def check(self) -> bool:
        """Restart the averaging process if it is dead and a try is due; True when one was started."""
        from comms.averaging import AveragingError

        av = self.averager
        if av.alive or self.clock() < self._next_try:
            return False
        old = set(av.visible_maddrs)
        peers = [a for a in self.initial_peers() if a not in old]
        try:
            av.restart(peers)
        except AveragingError as err:
            self.failures += 1
            if self.failures > self.max_failures:
                raise AveragingError(
                    err.code, f"averaging process failed to start {self.failures} times in a row; last: {err}"
                ) from err
            delay = self.backoff_s * 2 ** (self.failures - 1)
            log.warning("averaging process failed to start (%s); retrying in %.1f s", err, delay)
            self._next_try = self.clock() + delay
            return False
        self.failures = 0
        log.warning("averaging process restarted (%d restart(s)); peer id %s, %d bootstrap address(es)",
                    av.counters.restarts, av.peer_id, len(peers))  # fmt: skip
        return True


class TrainRole(Role):
    """Runs a `training.trainer.TrainingPeer` until the node stops or `total_steps` is reached."""

    name = "train"

    def __init__(self, config: Any, node: Any, device: Any = None) -> None:
        """`device` (a torch.device): where the inner loop runs, as the node's placement chose (None: as configured)."""
        self.config = config if device is None else config.model_copy(update={"device": str(device)})
        self.device = device
        self.node = node
        self.peer: Any = None
        self.averager: Any = None
        self.restarts: AveragerRestarts | None = None
        self.coscheduled: Any = None  # swarm.runtime.coschedule.CoscheduledTraining, with a serving engine on this node
        self._stop = threading.Event()
        self._done = threading.Event()
        self._done.set()  # no training thread runs yet

    def _train_peer_ids(self) -> list[str]:
        ids = [e.announce.peer_id for e in self.node.membership.entries() if "train" in e.announce.roles]
        return sorted({*ids, self.node.peer_id})

    def _gossiped_hivemind_addrs(self) -> list[str]:
        return [a for e in self.node.membership.entries() for a in e.announce.hivemind_addrs]

    async def _initial_peers(self) -> list[str]:
        """Hivemind addresses gossiped by training peers; waits a little for the first ones to show up."""
        with trio.move_on_after(self.config.discovery_wait_s):
            while True:
                found = self._gossiped_hivemind_addrs()
                if found:
                    return found
                await trio.sleep(0.25)
        return []

    async def _await_peers(self) -> None:
        """The first step waits (bounded) until `start_peers` other training peers are set up (they announce their
        averaging addresses then), so that a swarm started together trains together from its first round."""
        with trio.move_on_after(self.config.start_wait_s):
            while True:
                announces = [e.announce for e in self.node.membership.entries()]
                ready = {a.peer_id for a in announces if "train" in a.roles and a.hivemind_addrs} - {self.node.peer_id}
                if len(ready) >= self.config.start_peers:
                    return
                await trio.sleep(0.25)

    def _setup(self, initial_peers: list[str]) -> str:
        from comms.averaging import HivemindAverager, averaging_host_maddrs
        from comms.pnet import read_swarm_key
        from training.data import TokenData, load_corpus, shard_for_peer
        from training.model import load_tokenizer
        from training.trainer import TrainingPeer, averaging_settings

        cfg = self.config
        if cfg.checkpoint_dir is None:
            cfg = cfg.model_copy(
                update={"checkpoint_dir": Path.home() / ".cache" / "swarm" / "train" / self.node.peer_id}
            )
        tokens = load_corpus(cfg.data_path, cfg.max_corpus_bytes, load_tokenizer(cfg.model))
        data = TokenData(tokens, cfg.eval_fraction, cfg.seq_len)
        shards = cfg.data_shards
        shard = cfg.data_shard if cfg.data_shard is not None else shard_for_peer(self.node.peer_id, shards)
        peer = TrainingPeer(cfg, data, peer_id=self.node.peer_id, shard_index=shard, num_shards=shards,
                            peers=self._train_peer_ids)  # fmt: skip
        network = self.node.config.network
        settings = averaging_settings(
            cfg,
            prefix=f"swarm-{network.swarm_id}",
            initial_peers=tuple(initial_peers),
            host_maddrs=averaging_host_maddrs(network.listen),  # where the node listens, never wider
        )
        if network.swarm_key is not None:  # a private swarm: no averaging RPC without proof of its key
            settings = dataclasses.replace(settings, swarm_key_hex=read_swarm_key(network.swarm_key))
        averager = HivemindAverager(settings, [(peer.exchange_len,)], peer.model_hash)
        averager.start()
        peer.averager = averager
        self.averager = averager
        self.restarts = AveragerRestarts(averager, self._gossiped_hivemind_addrs,
                                         max_failures=cfg.averager_max_restart_failures,
                                         backoff_s=cfg.averager_restart_backoff_s)  # fmt: skip
        how = peer.resume_or_join(join_timeout_s=20.0 if initial_peers else None)
        peer.evaluate()  # where this peer starts: every later round's eval loss compares with it
        self.peer = peer
        self._coschedule(peer)
        return how

    def _coschedule(self, peer: Any) -> None:
        """With a serving engine on this node: micro-steps granted by the arbiter from the engine's slack."""
        serve = getattr(self.node, "serve_role", None)
        engine = getattr(serve, "engine", None)
        if engine is None or not self.node.config.coschedule.enabled:
            return
        from swarm.runtime.coschedule import CoscheduledTraining

        self.coscheduled = CoscheduledTraining(engine, peer, self.node.config.coschedule)
        log.info("%s", self.coscheduled.start())

    def _train(self) -> None:
        from swarm.runtime.arbiter import TrainerStopped

        if self.coscheduled is not None:
            self.coscheduled.lower_thread_priority()
        try:
            while not self._stop.is_set() and self.peer.status.step < self.config.total_steps:
                if self.restarts is not None and not self._stop.is_set():  # the averager is closed on stop
                    self.restarts.check()
                # eval loss of the held-out split at every round's end (the weights the group agreed on)
                self.peer.run(1, eval_every=self.config.inner_steps, should_stop=self._stop.is_set)
        except TrainerStopped:  # the node stops while a micro-step waits for its grant: the step is dropped
            pass
        finally:
            self._done.set()

    def _close(self) -> None:
        """Stop the averager first (an exchange in flight then fails at once), then the training thread; once
        that has stopped, checkpoint the state it reached (mid-round too: a restart resumes from there)."""
        if self.coscheduled is not None:
            self.coscheduled.stop()
        if self.averager is not None:
            self.averager.close(timeout_s=2.0)
        if self.peer is None:
            return
        grace_s = self.node.config.node.shutdown_grace_s  # for the inner step in progress to end
        if self._done.wait(grace_s):
            try:
                self.peer.checkpoint()
                log.info("training: checkpoint of step %d written on shutdown", self.peer.status.step)
            except OSError as err:
                log.error("training: could not write the shutdown checkpoint: %s", err)
        else:  # writing while the thread still steps would save a torn state
            log.error("training: no shutdown checkpoint: the training thread did not stop in %.1f s", grace_s)
        self.peer.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        initial = await self._initial_peers()
        log.info("training: %d hivemind peer address(es) from gossip", len(initial))
        try:
            how = await trio.to_thread.run_sync(self._setup, initial)
            log.info("training %s (%s, codec %s): %s", self.peer.model_hash[:12], self.config.outer_optimizer,
                     self.config.codec, how)  # fmt: skip
            task_status.started()
            await self._await_peers()
            self._done.clear()
            await trio.to_thread.run_sync(self._train, abandon_on_cancel=True)
            log.info("training reached total_steps=%d; still sharing state with late joiners", self.config.total_steps)
            await trio.sleep_forever()
        finally:
            self._stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close)

    def fill_announce(self, announce: PeerAnnounce) -> None:
        peer, averager = self.peer, self.averager
        if peer is None:
            return
        loss = peer.status.loss
        announce.training = TrainingState(
            round=peer.status.round_index, step=peer.status.step, loss=loss if math.isfinite(loss) else None
        )
        announce.hivemind_addrs = list(averager.visible_maddrs)[:32]
        counters = averager.counters
        self.node.metrics.set_bytes("averaging", counters.bytes_received, counters.bytes_sent)
        self.node.metrics.set_refused("AVERAGING_PART", counters.parts_refused)
        self.node.metrics.set_refused("AVERAGING_SWARM_KEY", counters.swarm_key_refused)
