"""`swarm doctor`: checks what most often keeps peers from finding each other, each with OK or a concrete fix.

Ports free, listen addresses bound and dialable, each bootstrap peer reachable over TCP, completing the libp2p
handshake (which fails when swarm keys differ) and answering our peer exchange, clocks in step with the peers'
announces, the averaging stack able to start. It runs a throwaway host with a fresh identity (never the node's,
so a running node is not impersonated) and knows nothing of serving or training beyond starting their stacks.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import trio

from comms.errors import CommsError
from comms.host import P2PHost
from comms.identity import generate_identity
from comms.metrics import NetMetrics
from protocols import GOSSIP_LIMITS, PeerAnnounce, ProtocolError, decode_as
from protocols.errors import describe_error
from protocols.ids import ANNOUNCE_TOPIC, STATUS_TOPIC, topic
from protocols.status import PeerStatus
from swarm.runtime.config import NodeConfig
from swarm.runtime.discovery import Discovery
from swarm.runtime.membership import Membership

Status = Literal["ok", "warn", "fail"]
SKEW_WARN_S = 1.0  # more than this and logs of two peers no longer line up
CLOCK_SAMPLES = 3  # messages heard per peer before its skew estimate counts as settled
SKEW_FAIL_S = 10.0  # hivemind's DHT records and averaging deadlines are wall-clock times: groups stop forming
LOOPBACK_PREFIXES = ("127.", "::1", "localhost")


@dataclass
class Finding:
    """One check's outcome; `fix` says what to do when it is not OK."""

    check: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Endpoint:
    """The parts of a TCP multiaddr the checks need."""

    host: str
    port: int
    peer_id: str | None

    @classmethod
    def parse(cls, addr: str) -> Endpoint | None:
        parts = addr.strip("/").split("/")
        pairs = dict(zip(parts[::2], parts[1::2], strict=False))
        host = next((pairs[k] for k in ("ip4", "ip6", "dns4", "dns6", "dns") if k in pairs), None)
        if host is None or not pairs.get("tcp", "").isdigit():
            return None
        return cls(host, int(pairs["tcp"]), pairs.get("p2p"))

    @property
    def loopback(self) -> bool:
        return self.host.startswith(LOOPBACK_PREFIXES)


def port_in_use(host: str, port: int) -> bool:
    """True when binding host:port fails because something listens there already."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def check_ports(config: NodeConfig) -> list[Finding]:
    """Every fixed port this node would bind (libp2p listen addresses and the HTTP API), free or not."""
    wanted: list[tuple[str, str, int]] = []
    for addr in config.network.listen:
        end = Endpoint.parse(addr)
        if end is not None and end.port:
            wanted.append((f"listen {addr}", end.host, end.port))
    if config.node.http:
        host, _, port = config.node.http.rpartition(":")
        if int(port):
            wanted.append((f"http {config.node.http}", host.strip("[]") or "0.0.0.0", int(port)))
    findings = []
    for name, host, port in wanted:
        if port_in_use(host, port):
            findings.append(Finding(f"port {name}", "fail", f"port {port} on {host} is in use",
                                    f"stop what listens there (`ss -ltnp 'sport = :{port}'` shows it; another swarm "
                                    "node?) or pick another port"))  # fmt: skip
        else:
            findings.append(Finding(f"port {name}", "ok", f"port {port} on {host} is free"))
    return findings


def _free_port_listen(config: NodeConfig, busy: set[str]) -> list[str]:
    """The listen addresses with port 0 where the configured port is taken, so the other checks can still run."""
    out = []
    for addr in config.network.listen:
        end = Endpoint.parse(addr)
        out.append(addr.replace(f"/tcp/{end.port}", "/tcp/0") if end is not None and addr in busy else addr)
    return out


class Doctor:
    """Runs every check against `config`; `run()` returns the findings in the order they were made."""

    def __init__(self, config: NodeConfig, *, averaging: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.averaging = averaging
        self.clock = clock
        self.findings: list[Finding] = []

    def add(self, check: str, status: Status, detail: str, fix: str = "") -> None:
        self.findings.append(Finding(check, status, detail, fix))

    async def run(self) -> list[Finding]:
        net = self.config.network
        self.findings += check_ports(self.config)
        busy = {f.check.removeprefix("port listen ") for f in self.findings if f.status == "fail"}
        listen = _free_port_listen(self.config, busy)
        try:
            host = P2PHost(net.model_copy(update={"listen": listen}), generate_identity(), NetMetrics())
        except CommsError as err:  # an unreadable or malformed swarm key
            self.add("swarm key", "fail", str(err), "create one with `swarm swarm-key PATH` and copy it to every node")
            return self.findings
        membership = Membership(host.peer_id, net.peer_timeout_s)
        discovery = Discovery(host, membership, [], net.max_dial_peers, net.request_timeout_s)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(host.run)
                await self._check_listen(host)
                answered = [await self._check_bootstrap(host, discovery, addr) for addr in net.peers]
                self._check_swarm_key(answered)
                if any(a == "ok" for a in answered):
                    await self._check_clock(host)
                nursery.cancel_scope.cancel()
        except* (CommsError, OSError) as group:
            self.add(
                "listen",
                "fail",
                f"cannot listen on {', '.join(listen)}: {describe_error(group)}",
                "listen on an address of this machine (`--listen /ip4/0.0.0.0/tcp/4001`) and a free port",
            )
        if self.averaging:
            await self._check_averaging(listen)
        return self.findings

    async def _check_listen(self, host: P2PHost) -> None:
        addrs = host.dialable_addrs()
        for addr in addrs:
            end = Endpoint.parse(addr)
            if end is None:
                continue
            try:
                with trio.fail_after(self.config.network.dial_timeout_s):
                    stream = await trio.open_tcp_stream(end.host, end.port)
                await stream.aclose()
                self.add("listen", "ok", f"{addr} is bound and accepts connections from this machine")
            except (OSError, trio.TooSlowError) as err:
                self.add("listen", "fail", f"{addr} is bound but refuses this machine: {describe_error(err)}",
                         "a local firewall blocks it: allow inbound TCP on that port")  # fmt: skip
        remote = [a for a in self.config.network.peers if (e := Endpoint.parse(a)) is not None and not e.loopback]
        bound = [e for a in addrs if (e := Endpoint.parse(a)) is not None]
        if remote and bound and all(e.loopback for e in bound):
            self.add(
                "listen",
                "warn",
                "this node listens on loopback only, but its bootstrap peers are on other "
                "machines: they cannot dial it back",
                "listen on all interfaces: --listen /ip4/0.0.0.0/tcp/4001",
            )

    async def _check_bootstrap(self, host: P2PHost, discovery: Discovery, addr: str) -> str:
        """TCP, then the libp2p handshake, then our peer exchange; returns how far it got: "bad", "tcp",
        "handshake" or "ok"."""
        name = f"bootstrap {addr}"
        end = Endpoint.parse(addr)
        if end is None or end.peer_id is None:
            self.add(name, "fail", "not a TCP multiaddr ending in /p2p/<peer id>",
                     "copy the address a node prints on start (`node <id> listening on: ...`)")  # fmt: skip
            return "bad"
        timeout_s = self.config.network.dial_timeout_s
        try:
            with trio.fail_after(timeout_s):
                stream = await trio.open_tcp_stream(end.host, end.port)
            await stream.aclose()
        except (OSError, trio.TooSlowError) as err:
            why = f"no answer in {timeout_s:g} s" if isinstance(err, trio.TooSlowError) else describe_error(err)
            self.add(name, "fail", f"{end.host}:{end.port} does not answer over TCP: {why}",
                     f"check that the peer runs and listens on {end.host}:{end.port}, the address is right, "
                     f"and that firewalls and NAT let TCP {end.port} through")  # fmt: skip
            return "bad"
        try:
            remote = await host.connect(addr)
        except CommsError as err:
            if self.config.network.swarm_key is not None:
                fix = ("the peer's swarm key differs from this --swarm-key (or it runs without one): copy the same "
                       "swarm.key to every node")  # fmt: skip
            else:
                fix = "the peer runs a private swarm: give this node its --swarm-key; or it is not a swarm node"
            fix += "; and use the address the peer prints on start (its peer id must be the one listening there)"
            self.add(name, "fail", f"TCP answers but the libp2p handshake fails: {err}", fix)
            return "tcp"
        try:
            with trio.fail_after(self.config.network.request_timeout_s):
                records = await discovery.exchange_with(remote)
        except (CommsError, ProtocolError, trio.TooSlowError) as err:
            self.add(name, "fail", f"connected, but it does not answer our peer exchange: {describe_error(err)}",
                     "it is a libp2p node but not a swarm node of a compatible version: upgrade both to the "
                     "same release")  # fmt: skip
            return "handshake"
        self.add(name, "ok", f"reachable, handshake done, speaks our protocol; it knows {len(records)} other peer(s)")
        return "ok"

    def _check_swarm_key(self, answered: list[str]) -> None:
        keyed = self.config.network.swarm_key is not None
        where = "a private swarm (swarm key set)" if keyed else "an open swarm (no swarm key)"
        if "tcp" in answered:
            detail = f"this node is in {where}; a bootstrap peer answers TCP but not the handshake, as when keys differ"
            self.add("swarm key", "fail", detail, "use the same swarm.key file on every node, or none on any")
        elif "ok" in answered:
            self.add("swarm key", "ok", f"this node is in {where}, as its bootstrap peers are")
        else:
            self.add("swarm key", "warn", f"this node is in {where}; no bootstrap peer answered to compare with")

    async def _check_clock(self, host: P2PHost) -> None:
        """Each peer's clock from the timestamps of its statuses and announces: statuses come every status period,
        while a peer refreshes its full announce only every few periods (older peers announce instead). A message's
        timestamp minus its receipt is the skew less its delivery delay, so the largest over `CLOCK_SAMPLES`
        messages (the least delayed) is the estimate: a busy machine's slow delivery is not a skewed clock."""
        net = self.config.network
        wait_s = max(5 * net.heartbeat_s, 10.0)  # the wait ends as soon as every peer dialled is heard enough
        skews: dict[str, float] = {}
        heard: dict[str, int] = {}

        async def listen(topic_name: str, kind: type, done: trio.CancelScope) -> None:
            async with host.subscribe(topic(net.swarm_id, topic_name)) as messages:
                async for origin, data in messages:
                    try:
                        message = decode_as(data, kind, limits=GOSSIP_LIMITS)
                    except ProtocolError:
                        continue
                    if message.peer_id == origin:
                        skew = message.timestamp_ms / 1000 - self.clock()
                        skews[origin] = max(skew, skews.get(origin, skew))
                        heard[origin] = heard.get(origin, 0) + 1
                    if all(heard.get(p, 0) >= CLOCK_SAMPLES for p in host.connected_peers()):
                        done.cancel()

        with trio.move_on_after(wait_s) as done:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen, ANNOUNCE_TOPIC, PeerAnnounce, done)
                nursery.start_soon(listen, STATUS_TOPIC, PeerStatus, done)
        self.findings.append(judge_skew(skews, wait_s))

    async def _check_averaging(self, listen: list[str]) -> None:
        from comms.averaging import AveragingError, AveragingSettings, HivemindAverager, averaging_host_maddrs
        from comms.pnet import read_swarm_key

        net = self.config.network
        try:
            key = read_swarm_key(net.swarm_key) if net.swarm_key else None
            settings = AveragingSettings(prefix="swarm-doctor", host_maddrs=averaging_host_maddrs(listen),
                                         startup_timeout_s=30.0, swarm_key_hex=key)  # fmt: skip
        except (CommsError, ValueError) as err:
            self.add("averaging", "fail", f"cannot set the averaging stack up: {describe_error(err)}",
                     "listen on an /ip4 or /ip6 address with a readable swarm key")  # fmt: skip
            return

        def _start_and_close() -> str:
            with HivemindAverager(settings, [(1,)], "doctor") as averager:
                return ", ".join(averager.visible_maddrs[:2])

        try:
            where = await trio.to_thread.run_sync(_start_and_close)
        except (AveragingError, OSError) as err:
            self.add("averaging", "fail", f"the hivemind averaging process did not start: {describe_error(err)}",
                     "reinstall the dependencies (`make setup`); run with --log-level DEBUG for its log")  # fmt: skip
            return
        self.add("averaging", "ok", f"the hivemind averaging process starts and listens ({where})")


def judge_skew(skews: dict[str, float], waited_s: float) -> Finding:
    """The clock finding from each peer's announce time minus this machine's time on receipt (seconds)."""
    if not skews:
        return Finding("clock", "warn", f"no peer announce heard in {waited_s:g} s: clock skew not measured",
                       "check that the peers use this --swarm-id")  # fmt: skip
    peer, skew = max(skews.items(), key=lambda kv: abs(kv[1]))
    detail = f"largest skew {skew:+.2f} s (peer {peer[-8:]}, {len(skews)} peer(s) heard)"
    fix = "sync clocks with NTP: `timedatectl set-ntp true` or chrony"
    if abs(skew) > SKEW_FAIL_S:
        return Finding("clock", "fail", detail, fix + "; averaging groups form on wall-clock deadlines")
    if abs(skew) > SKEW_WARN_S:
        return Finding("clock", "warn", detail, fix)
    return Finding("clock", "ok", detail)


def failed(findings: list[Finding]) -> bool:
    return any(f.status == "fail" for f in findings)
