"""Roles a node can take besides being a peer: `serve` runs the generation engine beside the host.

A role is a service under the node's nursery (``await nursery.start(role.run)``) that may add to the node's
announce. Torch work stays in the role's own thread; the event loop only waits on it. A role that cannot go on
raises RoleFailed (or anything else) from ``run``; the node then records why and stops announcing it.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any

import trio

from protocols import Load, PeerAnnounce
from protocols.errors import SwarmError
from protocols.messages import LOAD_PROBE_PROMPT_TOKENS

log = logging.getLogger(__name__)


class RoleFailed(SwarmError):
    """A role stopped working after it had started; the message says why, in one line."""


class RoleNotReady(SwarmError):
    """A role asked for figures it does not have yet (it is still starting)."""


class Role:
    """A capability of a node. ``run`` starts it, reports readiness, and stops it when cancelled.

    ``failure`` is set by the node when ``run`` ended with an error after readiness: the role is then down for good.
    """

    name = ""
    failure: str | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise NotImplementedError

    def fill_announce(self, announce: PeerAnnounce) -> None:
        """Add this role's state (model, load, training progress) to the node's next announce."""


class ServeRole(Role):
    """Runs the serving engine (`serving.engine.Engine`) in its worker thread for as long as the node runs."""

    name = "serve"

    def __init__(self, serving_config: Any, device: Any = None) -> None:
        """`device` (a torch.device): where the engine runs, as the node's placement chose (None: as configured)."""
        self.config = serving_config if device is None else serving_config.model_copy(update={"device": str(device)})
        self.device = device
        self.engine: Any = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from serving.engine import Engine

        engine = Engine(self.config)
        died = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def _on_failure(_reason: str) -> None:  # called from the engine thread
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(died.set, trio_token=token)

        engine.on_failure = _on_failure
        log.info("loading model %s and profiling this hardware", self.config.model)
        await trio.to_thread.run_sync(engine.start)  # model load and latency profile block: not on the loop
        self.engine = engine
        log.info("serving %s (hash %s) on %s", engine.model_id, engine.model_hash[:12], engine.device)
        task_status.started()
        try:
            await died.wait()
            raise RoleFailed(engine.failure or "engine thread died")
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
        fill_device_speeds(announce, engine)


def fill_device_speeds(announce: PeerAnnounce, engine: Any) -> None:
    """The serving device's entry in the announce's devices gets the speeds of the engine's latency profile
    (a probe-length prompt's prefill, a single-request decode step)."""
    kind, index = engine.device.type, engine.device.index or 0
    same_kind = [d for d in announce.devices if d.kind == kind]
    if index >= len(same_kind):
        return
    n = LOAD_PROBE_PROMPT_TOKENS
    same_kind[index].prefill_tok_s = n / engine.latency.profiled_step_s([(n, n)])
    same_kind[index].decode_tok_s = 1.0 / engine.latency.profiled_step_s([(1, n)])


def role_devices(placement: Any) -> dict[str, Any]:
    """The torch.device of each placed role: `serve` (the first serving device: one engine a node), `train`,
    `rollouts`."""
    import torch

    chosen = {"serve": placement.serve[0] if placement.serve else None, "train": placement.train,
              "rollouts": placement.rollouts}  # fmt: skip
    return {role: torch.device(name) for role, name in chosen.items() if name is not None}


def build_roles(config: Any, node: Any, placement: Any = None) -> list[Role]:
    """The roles `config` asks for, each built on the device `placement` (swarm.runtime.placement) chose for it;
    without a placement, each takes its configured device."""
    devices = role_devices(placement) if placement is not None else {}
    roles: list[Role] = []
    if "serve" in config.node.roles:
        roles.append(ServeRole(config.serving, devices.get("serve")))
    if "train" in config.node.roles:
        from swarm.runtime.train_role import TrainRole

        roles.append(TrainRole(config.training, node, devices.get("train")))
    if "rl" in config.node.roles:
        from swarm.runtime.rl_role import RLRole

        # after serve: it samples through the serve role's engine, else through its own on the rollouts device
        roles.append(RLRole(config, node, devices.get("rollouts")))
    return roles
