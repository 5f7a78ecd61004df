"""The node's libp2p host on trio: TCP, noise, yamux, optional pnet key, gossipsub, typed stream handlers.

One `P2PHost` per node. It knows peers, addresses, topics and framed messages; it knows nothing about what the
node does with them (membership, serving, training live above). libp2p errors are translated to comms errors.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.exceptions import BaseLibp2pError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.address_validation import expand_wildcard_address

from comms.config import NetworkConfig
from comms.errors import DialError, ListenError
from comms.identity import peer_id_of
from comms.metrics import NetMetrics
from comms.pnet import read_swarm_key
from comms.stream_guard import BanNotifee, GuardedPubsub, StreamGuard
from comms.streams import MessageStream, StreamClosedError
from protocols import Limits, ProtocolError
from protocols.errors import ErrorCode

log = logging.getLogger(__name__)

GOSSIPSUB_PROTOCOLS = ["/meshsub/1.1.0", "/meshsub/1.0.0"]
MAX_GOSSIP_MSGS_PER_TOPIC_PER_S = 500.0
DISCONNECT_QUEUE = 64  # peers waiting to be dropped; more are asked again by their next stream
StreamHandler = Callable[[MessageStream, str], Awaitable[None]]
GossipValidator = Callable[[str, bytes], bool]


class P2PHost:
    """A libp2p host with gossipsub, run as a service: ``await nursery.start(host.run)``."""

    def __init__(self, config: NetworkConfig, key_pair: KeyPair, metrics: NetMetrics | None = None) -> None:
        self.config = config
        self.key_pair = key_pair
        self.peer_id = peer_id_of(key_pair)
        self.metrics = metrics or NetMetrics()
        psk = read_swarm_key(config.swarm_key) if config.swarm_key else None
        security = {NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)}
        listen = [multiaddr.Multiaddr(a) for a in config.listen]
        self._listen = listen
        self._host = new_host(
            key_pair=key_pair, sec_opt=security, muxer_preference="YAMUX", psk=psk, listen_addrs=listen
        )
        self._gossipsub = GossipSub(
            protocols=GOSSIPSUB_PROTOCOLS,
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=1,
            # The default (10 msg/s per topic per peer) throttles relayed announces once a swarm passes ~20 peers.
            max_messages_per_topic_per_second=MAX_GOSSIP_MSGS_PER_TOPIC_PER_S,
        )
        self._pubsub = GuardedPubsub(self._host, self._gossipsub)
        # Every inbound stream, whichever protocol it negotiates, runs inside the guard.
        self.guard = StreamGuard(config.stream_guard, self.metrics)
        network = self._host.get_network()
        network.set_stream_handler(self.guard.wrap(network.common_stream_handler, self._request_disconnect))
        network.register_notifee(BanNotifee(self.guard, self._request_disconnect))
        self._to_disconnect, self._disconnect_queue = trio.open_memory_channel[str](DISCONNECT_QUEUE)
        self._running = False

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, start gossip, signal readiness, then serve until cancelled."""
        async with (
            self._host.run(self._listen),
            background_trio_service(self._pubsub),
            background_trio_service(self._gossipsub),
        ):
            listening = self._host.get_transport_addrs()
            if len(listening) < len(self._listen):
                # py-libp2p logs a failed listener and carries on; a node nobody can dial is of no use.
                missing = [str(a) for a in self._listen if not any(_same_listener(a, got) for got in listening)]
                raise ListenError(f"cannot listen on {', '.join(missing) or self._listen}: address in use or absent")
            await self._pubsub.wait_until_ready()
            self._running = True
            task_status.started()
            try:
                await self._disconnect_loop()
            finally:
                self._running = False

    def _request_disconnect(self, peer_id: str) -> None:
        """Queue a peer to drop: a stream's task cannot close its own connection without cancelling itself."""
        try:
            self._to_disconnect.send_nowait(peer_id)
        except trio.WouldBlock:
            pass  # the loop is behind on drops already; the peer's next stream asks again

    async def _disconnect_loop(self) -> None:
        async for peer_id in self._disconnect_queue:
            if peer_id in self.connected_peers():
                with trio.move_on_after(self.config.dial_timeout_s):
                    await self.disconnect(peer_id)

    def dialable_addrs(self) -> list[str]:
        """Full multiaddrs (with /p2p/<id>) others can dial; wildcard listen addresses are expanded."""
        out: list[str] = []
        for addr in self._host.get_transport_addrs():
            for concrete in expand_wildcard_address(addr) if "0.0.0.0" in str(addr) else [addr]:
                full = f"{concrete}/p2p/{self.peer_id}"
                if full not in out:
                    out.append(full)
        return out

    # ------------------------------------------------------------------ peers

    async def connect(self, addr: str) -> str:
        """Dial a full multiaddr; returns the remote PeerID. Raises DialError on failure or timeout."""
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as err:
            raise DialError(f"bad peer multiaddr {addr!r}: {err}") from err
        if str(info.peer_id) == self.peer_id:
            raise DialError(f"{addr} is this node itself")
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                await self._host.connect(info)
        except trio.TooSlowError as err:
            raise DialError(f"dialling {addr} timed out after {self.config.dial_timeout_s} s") from err
        except (BaseLibp2pError, OSError, trio.BrokenResourceError) as err:
            raise DialError(f"cannot dial {addr}: {err}") from err
        return str(info.peer_id)

    def connected_peers(self) -> set[str]:
        return {str(p) for p in self._host.get_connected_peers()}

    async def disconnect(self, peer_id: str) -> None:
        with suppress(BaseLibp2pError, ValueError):
            await self._host.disconnect(ID.from_base58(peer_id))

    # ------------------------------------------------------------------ streams

    def set_handler(self, protocol: str, handler: StreamHandler, limits: Limits) -> None:
        """Serve ``protocol``: ``handler(stream, remote_peer_id)``. Refusals become typed ErrorReplies and count
        as the peer's bad streams; nothing a remote sends can crash the host."""

        async def _serve(raw: INetStream) -> None:
            stream = MessageStream(raw, limits, self.metrics)
            remote = str(raw.muxed_conn.peer_id)
            try:
                await handler(stream, remote)
            except ProtocolError as err:
                await stream.refuse(err)
                if self.guard.strike(remote, protocol, str(err)):
                    self._request_disconnect(remote)
            except StreamClosedError as err:  # the remote went away mid-exchange: neither hostile nor our bug
                log.debug("%s stream from %s ended early: %s", protocol, remote[-8:], err)
            except Exception as err:  # the handler's bug must not take the host down
                log.exception("handler for %s failed", protocol)
                await stream.refuse(ProtocolError(ErrorCode.INTERNAL, type(err).__name__))
            finally:
                await stream.close()

        self._host.set_stream_handler(protocol, _serve)

    async def open_stream(self, peer_id: str, protocol: str, limits: Limits) -> MessageStream:
        """Open a stream to a connected (or dialable from the peerstore) peer."""
        try:
            with trio.fail_after(self.config.dial_timeout_s):
                raw = await self._host.new_stream(ID.from_base58(peer_id), [protocol])
        except trio.TooSlowError as err:
            raise DialError(f"opening {protocol} to {peer_id} timed out") from err
        except (BaseLibp2pError, OSError, ValueError) as err:
            raise DialError(f"cannot open {protocol} to {peer_id}: {err}") from err
        return MessageStream(raw, limits, self.metrics)

    # ------------------------------------------------------------------ gossip

    def set_topic_validator(self, topic: str, validator: GossipValidator) -> None:
        """Only messages ``validator(origin_peer_id, data)`` accepts are delivered and forwarded."""

        def _validate(_forwarder: ID, msg: object) -> bool:
            origin = _origin(msg)
            return origin is not None and validator(origin, msg.data)  # type: ignore[attr-defined]

        self._pubsub.set_topic_validator(topic, _validate, False)

    @asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[trio.MemoryReceiveChannel[tuple[str, bytes]]]:
        """Yield a channel of ``(origin_peer_id, payload)`` for ``topic``, including this node's own messages."""
        subscription = await self._pubsub.subscribe(topic)
        send, receive = trio.open_memory_channel[tuple[str, bytes]](256)

        async def _pump() -> None:
            while True:
                msg = await subscription.get()
                origin = _origin(msg)
                if origin is None:
                    continue
                self.metrics.received(f"gossip:{topic.rsplit('/', 1)[-1]}", "gossip", len(msg.data))
                try:
                    send.send_nowait((origin, msg.data))
                except trio.WouldBlock:
                    log.warning("gossip consumer of %s is behind; dropping a message", topic)

        # Unsubscribing happens outside the pump's nursery: awaiting inside its cancelled scope would raise a
        # Cancelled that the scope then swallows, together with the exception the caller's block raised.
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump)
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            if self._running:
                with trio.move_on_after(1.0):
                    await self._pubsub.unsubscribe(topic)

    def mesh_size(self, topic: str) -> int:
        """Peers in this node's gossipsub mesh for ``topic`` (0 before the first mesh link forms)."""
        return len(self._gossipsub.mesh.get(topic, ()))

    async def publish(self, topic: str, data: bytes) -> None:
        await self._pubsub.publish(topic, data)
        self.metrics.sent(f"gossip:{topic.rsplit('/', 1)[-1]}", "gossip", len(data))


def _same_listener(asked: multiaddr.Multiaddr, got: multiaddr.Multiaddr) -> bool:
    """``got`` serves the listen address ``asked`` (port 0 in ``asked`` matches any port)."""
    asked_parts, got_parts = str(asked).split("/"), str(got).split("/")
    if len(asked_parts) != len(got_parts):
        return False
    *asked_head, asked_port = asked_parts
    *got_head, got_port = got_parts
    return asked_head == got_head and asked_port in (got_port, "0")


def _origin(msg: object) -> str | None:
    raw = getattr(msg, "from_id", b"")
    if not raw:
        return None
    try:
        return str(ID(raw))
    except Exception:
        return None
