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
from pathlib import Path
from typing import Any

import trio

from protocols import PeerAnnounce, TrainingState
from swarm.roles import Role

log = logging.getLogger(__name__)

NUM_DATA_SHARDS = 16  # a peer's shard is derived from its PeerID among these
DISCOVERY_WAIT_S = 6.0  # how long to listen for other training peers before starting a DHT alone


def byte_tokenizer_files() -> dict[str, bytes]:
    """The embedded byte-level tokenizer's files (bytes are ids 0-255, as in training), so that every checkpoint
    directory is one `swarm join --roles serve --model DIR` can serve."""
    import tempfile

    from serving.model import build_byte_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build_byte_tokenizer().save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


class TrainRole(Role):
    """Runs a `training.trainer.TrainingPeer` until the node stops or `total_steps` is reached."""

    name = "train"

    def __init__(self, config: Any, node: Any) -> None:
        self.config = config
        self.node = node
        self.peer: Any = None
        self.averager: Any = None
        self._stop = threading.Event()
        self._done = threading.Event()

    def _train_peer_ids(self) -> list[str]:
        ids = [e.announce.peer_id for e in self.node.membership.entries() if "train" in e.announce.roles]
        return sorted({*ids, self.node.peer_id})

    async def _initial_peers(self) -> list[str]:
        """Hivemind addresses gossiped by training peers; waits a little for the first ones to show up."""
        with trio.move_on_after(DISCOVERY_WAIT_S):
            while True:
                found = [a for e in self.node.membership.entries() for a in e.announce.hivemind_addrs]
                if found:
                    return found
                await trio.sleep(0.25)
        return []

    def _setup(self, initial_peers: list[str]) -> str:
        from comms.averaging import HivemindAverager
        from training.data import TokenData, load_corpus, shard_for_peer
        from training.trainer import TrainingPeer, averaging_settings

        cfg = self.config
        if cfg.checkpoint_dir is None:
            cfg = cfg.model_copy(
                update={"checkpoint_dir": Path.home() / ".cache" / "swarm" / "train" / self.node.peer_id}
            )
        data = TokenData(load_corpus(cfg.data_path, cfg.max_corpus_bytes), cfg.eval_fraction, cfg.seq_len)
        shard = shard_for_peer(self.node.peer_id, NUM_DATA_SHARDS)
        peer = TrainingPeer(cfg, data, peer_id=self.node.peer_id, shard_index=shard, num_shards=NUM_DATA_SHARDS,
                            peers=self._train_peer_ids)  # fmt: skip
        settings = averaging_settings(
            cfg,
            prefix=f"swarm-{self.node.config.network.swarm_id}",
            initial_peers=tuple(initial_peers),
            host_maddrs=(f"/ip4/{self._averaging_host()}/tcp/0",),
        )
        if cfg.outer_optimizer == "noloco":  # pairs: a group of two forms without waiting for more peers
            settings = dataclasses.replace(settings, target_group_size=2)
        peer.checkpoint_files = byte_tokenizer_files()
        averager = HivemindAverager(settings, [(peer.exchange_len,)], peer.model_hash)
        averager.start()
        peer.averager = averager
        self.averager = averager
        how = peer.resume_or_join(join_timeout_s=20.0 if initial_peers else None)
        self.peer = peer
        return how

    def _averaging_host(self) -> str:
        """Listen where the node listens: loopback for a local swarm, every interface otherwise."""
        listen = self.node.config.network.listen
        return "127.0.0.1" if all("/ip4/127." in a for a in listen) else "0.0.0.0"

    def _train(self) -> None:
        try:
            while not self._stop.is_set() and self.peer.status.step < self.config.total_steps:
                self.peer.run(1, should_stop=self._stop.is_set)
        finally:
            self._done.set()

    def _close(self) -> None:
        """Stop the averager first (an exchange in flight then fails at once), then the training thread."""
        if self.averager is not None:
            self.averager.close(timeout_s=2.0)
        if self.peer is not None:
            self._done.wait(5.0)
            self.peer.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        initial = await self._initial_peers()
        log.info("training: %d hivemind peer address(es) from gossip", len(initial))
        try:
            how = await trio.to_thread.run_sync(self._setup, initial)
            log.info("training %s (%s, codec %s): %s", self.peer.model_hash[:12], self.config.outer_optimizer,
                     self.config.codec, how)  # fmt: skip
            task_status.started()
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
