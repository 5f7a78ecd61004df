"""The node runtime: one trio event loop owning the libp2p host, gossip membership, discovery and the HTTP API.

Services (host, heartbeat, announce consumer, expiry, bootstrap, dialler, HTTP) run under one nursery, so
cancelling it stops them all. Torch work never runs here: roles run it in their own threads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import trio
from libp2p.crypto.keys import KeyPair

from comms.errors import ListenError
from comms.host import P2PHost
from comms.identity import load_or_create_identity
from comms.metrics import NetMetrics
from protocols import GOSSIP_LIMITS, PeerAnnounce, ProtocolError, decode_as, encode
from protocols.errors import ErrorCode, describe_error
from protocols.ids import ANNOUNCE_TOPIC, STATUS_TOPIC, topic
from protocols.status import PeerStatus
from swarm import __version__
from swarm.gateway.generate_service import GenerateService
from swarm.runtime.config import NodeConfig
from swarm.runtime.discovery import Discovery
from swarm.runtime.gossip_policy import announce_period_s, status_period_s
from swarm.runtime.hardware import detect_devices, detect_hardware, device_specs
from swarm.runtime.load_probe import LoadProbe
from swarm.runtime.membership import Membership
from swarm.runtime.placement import Placement, place_node
from swarm.runtime.roles import Role, build_roles

log = logging.getLogger(__name__)
VALIDATED_KEPT = 256  # decoded announces waiting for the consumer; older ones are decoded again if ever needed


class Node:
    """A swarm peer. ``await nursery.start(node.run)`` returns once it listens (and serves HTTP if asked)."""

    def __init__(self, config: NodeConfig, key_pair: KeyPair | None = None, *, client_only: bool = False) -> None:
        self.config = config
        self.client_only = client_only  # announces itself as a client: never routed to, serves nothing
        net = config.network
        self.metrics = NetMetrics()
        self.host = P2PHost(net, key_pair or load_or_create_identity(net.identity), self.metrics)
        self.peer_id = self.host.peer_id
        self.membership = Membership(
            self.peer_id, net.peer_timeout_s, max_peers=net.max_peers, max_per_model=net.max_peers_per_model
        )
        self.announce_topic = topic(net.swarm_id, ANNOUNCE_TOPIC)
        self.discovery = Discovery(
            self.host, self.membership, net.peers, net.max_dial_peers, net.request_timeout_s,
            gossip_isolated=lambda: self.host.mesh_size(self.announce_topic) == 0,
        )  # fmt: skip
        self.status_topic = topic(net.swarm_id, STATUS_TOPIC)
        self.load_probe = LoadProbe(self)
        # Where each role runs: decided once here from every device the node has (torch is imported for it only
        # when a role will need it anyway); ConfigError, naming the field and the devices, when it cannot be.
        with_roles = bool(config.node.roles) and not client_only
        self.devices = detect_devices(import_torch=with_roles)
        self.hardware = detect_hardware()
        self.placement: Placement | None = None
        if with_roles:
            self.placement = place_node(config, device_specs(self.devices))
            self._mark_placed(self.devices)
            log.info("placement: %s", self.placement.describe())
        self.roles = [] if client_only else build_roles(config, self, self.placement)
        if self.serve_role is not None:
            GenerateService(self.host, self.serve_role, net.request_timeout_s)
        self.http_url: str | None = None
        self.started_at = time.monotonic()
        self._seq = 0
        self._nursery: trio.Nursery | None = None
        # messages the gossip validators decoded, by message bytes, for the consumers to take without decoding again
        self._validated: OrderedDict[bytes, PeerAnnounce] = OrderedDict()
        self._validated_status: OrderedDict[bytes, PeerStatus] = OrderedDict()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from swarm.runtime.role_metrics import log_status
        from swarm.web.http_api import serve_http

        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.host.run)
            log.info("host up: joining the swarm as %s", self.peer_id)  # benches time a join from here
            self.host.set_topic_validator(self.announce_topic, self._validate_announce)
            self.host.set_topic_validator(self.status_topic, self._validate_status)
            async with (
                self.host.subscribe(self.announce_topic) as announces,
                self.host.subscribe(self.status_topic) as statuses,
            ):
                nursery.start_soon(self._consume_announces, announces)
                nursery.start_soon(self._consume_statuses, statuses)
                nursery.start_soon(self._heartbeat)
                nursery.start_soon(self._expire_loop)
                nursery.start_soon(self.discovery.run_bootstrap)
                nursery.start_soon(self.discovery.run_dialer)
                if self.config.node.http:
                    try:
                        self.http_url = await nursery.start(serve_http, self, self.config.node.http)
                    except* OSError as group:
                        bind = self.config.node.http
                        raise ListenError(f"cannot serve HTTP on {bind}: {describe_error(group)}") from group
                # Roles start once the node is in the swarm: training finds its averaging peers through gossip.
                for role in self.roles:
                    await nursery.start(self._run_role, role)
                self.hardware = detect_hardware()  # a role may have brought up an accelerator
                self.devices = detect_devices()
                self._mark_placed(self.devices)
                self._report_started()
                if self.config.node.status_interval_s > 0:
                    nursery.start_soon(log_status, self.roles, self.config.node.status_interval_s)
                task_status.started()
                await trio.sleep_forever()

    async def _run_role(self, role: Role, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run a role; once it has started, its failure is recorded and logged in one line instead of ending the
        node. A failure before readiness (a bad model path) still ends the start-up with that error."""
        started = _StartedFlag(task_status)
        try:
            await role.run(task_status=started)
        except Exception as err:
            if not started.done:
                raise
            role.failure = describe_error(err)
            log.error("role %s failed and is no longer announced: %s", role.name, role.failure)
            log.debug("role %s failure", role.name, exc_info=err)

    def health(self) -> tuple[str, str | None]:
        """``("ok", None)``, or ``("degraded" | "failed", "<role>: <why>; ...")`` when roles have failed: failed
        when every role this node was asked to run is down, degraded while some still work."""
        failed = [r for r in self.roles if r.failure]
        if not failed:
            return "ok", None
        reason = "; ".join(f"{r.name}: {r.failure}" for r in failed)
        return ("failed" if len(failed) == len(self.roles) else "degraded"), reason

    def _mark_placed(self, devices: list[Any]) -> None:
        """Each announced device lists what the placement runs on it."""
        if self.placement is None:
            return
        for spec, device in zip(device_specs(devices), devices, strict=True):
            device.roles = self.placement.roles_on(spec.name)

    def placement_view(self) -> dict[str, Any] | None:
        """The placement as /healthz and the peers view show it (None for a node without roles)."""
        return self.placement.as_dict() if self.placement is not None else None

    def live_role_names(self) -> list[str]:
        """The roles this node announces: those asked for, less those that failed."""
        failed = {r.name for r in self.roles if r.failure}
        return [name for name in self.config.node.roles if name not in failed]

    def stop(self) -> None:
        """Cancel every service of this node; ``run`` then returns."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _report_started(self) -> None:
        addrs = self.host.dialable_addrs()
        log.info("node %s listening on:\n  %s", self.peer_id, "\n  ".join(addrs))
        if self.http_url:
            log.info("HTTP API on %s", self.http_url)
        info_file = self.config.node.info_file
        if info_file is not None:
            _write_json_atomic(
                info_file,
                {"peer_id": self.peer_id, "addrs": addrs, "http": self.http_url, "pid": os.getpid()},
            )

    # ------------------------------------------------------------------ announces

    def make_announce(self, *, heartbeat: bool = True) -> PeerAnnounce:
        """This node's announce; ``heartbeat=False`` for a view of it that is not published."""
        if heartbeat:
            self._seq += 1
        announce = PeerAnnounce(
            peer_id=self.peer_id,
            addrs=self.host.dialable_addrs(),
            version=__version__,
            timestamp_ms=int(time.time() * 1000),
            roles=["client"] if self.client_only else self.live_role_names(),
            hardware=self.hardware,
            seq=self._seq,
            devices=[dataclasses.replace(d) for d in self.devices],  # roles fill in measured speeds
        )
        for role in self.roles:
            if not role.failure:
                role.fill_announce(announce)
        return announce

    def serving_view(self) -> PeerAnnounce | None:
        """This node as a candidate for routing its own requests: model and current load only (no address
        enumeration, nothing published); None while it has no engine up."""
        role = self.serve_role
        if role is None or role.engine is None or role.failure:
            return None
        view = PeerAnnounce(peer_id=self.peer_id, addrs=[], version=__version__, timestamp_ms=0, roles=["serve"])
        role.fill_announce(view)
        return view

    def _validate_announce(self, origin: str, data: bytes) -> bool:
        try:
            announce = decode_as(data, PeerAnnounce, limits=GOSSIP_LIMITS)
        except ProtocolError as err:
            self.metrics.refuse(err.code)
            log.info("refused announce from %s: %s", origin[-8:], err)
            return False
        if announce.peer_id != origin:
            self.metrics.refuse(ErrorCode.BAD_REQUEST)
            log.info("refused announce from %s claiming to be %s", origin[-8:], announce.peer_id[-8:])
            return False
        self._validated[data] = announce
        while len(self._validated) > VALIDATED_KEPT:
            self._validated.popitem(last=False)
        return True

    def _validate_status(self, origin: str, data: bytes) -> bool:
        try:
            status = decode_as(data, PeerStatus, limits=GOSSIP_LIMITS)
        except ProtocolError as err:
            self.metrics.refuse(err.code)
            log.info("refused status from %s: %s", origin[-8:], err)
            return False
        if status.peer_id != origin:
            self.metrics.refuse(ErrorCode.BAD_REQUEST)
            return False
        self._validated_status[data] = status
        while len(self._validated_status) > VALIDATED_KEPT:
            self._validated_status.popitem(last=False)
        return True

    async def _consume_statuses(self, statuses: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        async for origin, data in statuses:
            status = self._validated_status.pop(data, None)
            if origin == self.peer_id:
                continue
            if status is None:
                try:
                    status = decode_as(data, PeerStatus, limits=GOSSIP_LIMITS)
                except ProtocolError:
                    continue  # already refused and counted by the validator
            self.membership.observe_status(status)

    async def _consume_announces(self, announces: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        async for origin, data in announces:
            announce = self._validated.pop(data, None)
            if origin == self.peer_id:
                continue
            if announce is None:
                try:
                    announce = decode_as(data, PeerAnnounce, limits=GOSSIP_LIMITS)
                except ProtocolError:
                    continue  # already refused and counted by the validator
            if self.membership.observe(announce):
                log.info("peer joined: %s (%s)", announce.peer_id, ",".join(announce.roles) or "no roles")
            self.discovery.note_peer(announce.peer_id, announce.addrs)

    def status_period_s(self) -> float:
        net = self.config.network
        return status_period_s(self.membership.size.estimate(), net.heartbeat_s, net.status_budget_msgs_s)

    def make_status(self, announce: PeerAnnounce) -> PeerStatus:
        """The per-second half of ``announce``: load (serving peers), training and RL progress."""
        return PeerStatus(
            peer_id=announce.peer_id, seq=announce.seq, timestamp_ms=announce.timestamp_ms,
            period_s=self.status_period_s(), load=announce.load if "serve" in announce.roles else None,
            training=announce.training if "train" in announce.roles else None, rl=announce.rl,
        )  # fmt: skip

    async def _heartbeat(self) -> None:
        """Every status period: the full announce when its rarely-changing part changed, when this node's first
        gossip mesh link formed (a joiner is known at once, not a period later) or when its refresh is due;
        otherwise the small status. Both periods grow with the estimated swarm size (swarm/runtime/gossip_policy.py)."""
        net = self.config.network
        last_static: tuple | None = None
        announced_with_mesh = False
        next_announce = 0.0
        while True:
            announce = self.make_announce()
            static = static_part(announce)
            has_mesh = self.host.mesh_size(self.announce_topic) > 0
            now = trio.current_time()
            full = static != last_static or (has_mesh and not announced_with_mesh) or now >= next_announce
            try:
                if full:
                    if has_mesh and not announced_with_mesh:  # the join announce: benches time its spread from here
                        log.info("announcing to a gossip mesh of %d", self.host.mesh_size(self.announce_topic))
                    await self.host.publish(self.announce_topic, encode(announce))
                    last_static, announced_with_mesh = static, has_mesh
                    estimate = self.membership.size.estimate()
                    next_announce = now + announce_period_s(estimate, net.heartbeat_s, net.status_budget_msgs_s)
                else:
                    await self.host.publish(self.status_topic, encode(self.make_status(announce)))
            except Exception as err:  # a failed publish must not stop the heartbeat
                log.warning("announce failed: %s", err)
            # Wake early when the first mesh link forms, so the join announce goes out at once.
            deadline = trio.current_time() + self.status_period_s()
            while trio.current_time() < deadline:
                await trio.sleep(min(0.25, max(deadline - trio.current_time(), 0.0)))
                if not announced_with_mesh and self.host.mesh_size(self.announce_topic) > 0:
                    break

    async def _expire_loop(self) -> None:
        """Drop peers neither heard from nor connected for their expiry: an open connection vouches for a peer whose
        gossip a busy swarm delays (swarm/runtime/membership.py)."""
        period = min(self.config.network.heartbeat_s, 1.0)
        while True:
            await trio.sleep(period)
            for peer_id in self.membership.expire(connected=self.host.connected_peers()):
                log.info("peer left: %s (neither heard from nor connected for its expiry)", peer_id)
                self.discovery.forget(peer_id)

    # ------------------------------------------------------------------ views

    def server_announces(self) -> list[PeerAnnounce]:
        """Latest announces of live peers that serve a model."""
        return [e.announce for e in self.membership.entries() if "serve" in e.announce.roles]

    @property
    def serve_role(self) -> Any:
        return next((r for r in self.roles if r.name == "serve"), None)

    def peers_view(self) -> list[dict[str, Any]]:
        """This node and every live peer, as the HTTP API and `swarm status` show them."""
        now = self.membership.now()
        own = self.make_announce(heartbeat=False)
        rows = [_peer_row(own, age_s=0.0, is_self=True)]
        rows += [_peer_row(e.announce, age_s=e.age_s(now), is_self=False) for e in self.membership.entries()]
        return rows


def static_part(announce: PeerAnnounce) -> tuple:
    """What rarely changes in an announce: a change of any of it is published as a full announce at once."""
    return (tuple(announce.addrs), announce.version, tuple(announce.roles), announce.model_id, announce.model_hash,
            announce.hardware, tuple(announce.hivemind_addrs), tuple(announce.devices))  # fmt: skip


class _StartedFlag:
    """A task status that remembers whether ``started()`` was called, passing the call on."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self.inner.started(value)


def _peer_row(announce: PeerAnnounce, *, age_s: float, is_self: bool) -> dict[str, Any]:
    return {
        "peer_id": announce.peer_id,
        "addrs": announce.addrs,
        "roles": announce.roles,
        "version": announce.version,
        "age_s": round(age_s, 3),
        "self": is_self,
        "model_id": announce.model_id,
        "hardware": {
            "device": announce.hardware.device,
            "device_name": announce.hardware.device_name,
            "memory_bytes": announce.hardware.memory_bytes,
            "cpu_cores": announce.hardware.cpu_cores,
        },
        "load": vars(announce.load).copy(),
        "training": vars(announce.training).copy(),
        "rl": vars(announce.rl).copy() if announce.rl is not None else None,
        "devices": [dataclasses.asdict(d) for d in announce.devices],  # each with the roles placed on it
    }


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
