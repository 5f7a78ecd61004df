"""Roles a node can take besides being a peer: `serve` runs the generation engine beside the host.

A role is a service under the node's nursery (``await nursery.start(role.run)``) that may add to the node's
announce. Torch work stays in the role's own thread; the event loop only waits on it.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from protocols import Load, PeerAnnounce

log = logging.getLogger(__name__)


class Role:
    """A capability of a node. ``run`` starts it, reports readiness, and stops it when cancelled."""

    name = ""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    def fill_announce(self, announce: PeerAnnounce) -> None:
        """Add this role's state (model, load, training progress) to the node's next announce."""


class ServeRole(Role):
    """Runs the serving engine (`serving.engine.Engine`) in its worker thread for as long as the node runs."""

    name = "serve"

    def __init__(self, serving_config: Any) -> None:
        self.config = serving_config
        self.engine: Any = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from serving.engine import Engine

        engine = Engine(self.config)
        log.info("loading model %s and profiling this hardware", self.config.model)
        await trio.to_thread.run_sync(engine.start)  # model load and latency profile block: not on the loop
        self.engine = engine
        log.info("serving %s (hash %s) on %s", engine.model_id, engine.model_hash[:12], engine.device)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.engine = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(engine.stop, "node shutting down")

    def fill_announce(self, announce: PeerAnnounce) -> None:
        engine = self.engine
        if engine is None:
            return
        stats = engine.load()
        announce.model_id = engine.model_id
        announce.model_hash = engine.model_hash
        announce.load = Load(
            running=stats.running,
            waiting=stats.waiting,
            predicted_ttft_ms=float(stats.predicted_ttft_ms),
            decode_tok_s=float(stats.decode_tok_s),
            free_kv_tokens=stats.free_kv_tokens,
            prefill_tok_s=float(stats.prefill_tok_s),
        )


def build_roles(config: Any, node: Any) -> list[Role]:
    roles: list[Role] = []
    if "serve" in config.node.roles:
        roles.append(ServeRole(config.serving))
    if "train" in config.node.roles:
        from swarm.train_role import TrainRole

        roles.append(TrainRole(config.training, node))
    return roles
