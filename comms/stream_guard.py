"""Containment of hostile streams: whatever a remote sends on any protocol (ours or py-libp2p's own: gossipsub,
identify, ping) ends that stream only, is counted by protocol, and past a threshold drops and bans the peer.

Wraps the handler py-libp2p's network calls for every inbound stream, and subclasses Pubsub so gossip RPCs that
do not decode are refused rather than raised into the host's nursery. Knows streams and peers, not messages.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub
from pydantic import BaseModel, ConfigDict, Field

from comms.metrics import NetMetrics
from protocols.errors import ErrorCode, ProtocolError, describe_error

log = logging.getLogger(__name__)

NetStreamHandler = Callable[[INetStream], Awaitable[None]]
UNNEGOTIATED = "negotiation"  # label of a stream that failed before a protocol was agreed
REASON_CHARS = 200
MAX_VARINT_BYTES = 10  # a uvarint of 64 bits
PRUNE_ABOVE_PEERS = 1024  # peers tracked before stale entries are swept (a sweep is linear in them)


class StreamGuardConfig(BaseModel):
    """How many bad streams a peer may open before it is disconnected, and for how long it stays out."""

    model_config = ConfigDict(extra="forbid")

    max_bad_streams: int = Field(
        10, ge=1, le=10_000, description="Bad streams from one peer within window_s before it is disconnected."
    )
    window_s: float = Field(60.0, gt=0, le=86_400, description="Window in which a peer's bad streams are counted.")
    ban_s: float = Field(300.0, ge=0, le=86_400, description="A disconnected peer's streams are refused this long.")


class StreamGuard:
    """Counts bad streams per peer within a sliding window and decides when a peer is dropped and banned.

    ``clock`` is injectable (monotonic seconds) so tests step time instead of sleeping.
    """

    def __init__(
        self,
        config: StreamGuardConfig,
        metrics: NetMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._strikes: dict[str, deque[float]] = {}
        self._banned_until: dict[str, float] = {}

    def is_banned(self, peer_id: str) -> bool:
        until = self._banned_until.get(peer_id)
        if until is None:
            return False
        if self.clock() >= until:
            del self._banned_until[peer_id]
            return False
        return True

    def strike(self, peer_id: str, protocol: str, reason: str) -> bool:
        """Count one bad stream; True when the peer just passed the threshold and must be disconnected."""
        self.metrics.stream_error(protocol)
        log.warning("closed %s stream from %s: %s", protocol, peer_id[-8:], reason[:REASON_CHARS])
        now = self.clock()
        strikes = self._strikes.setdefault(peer_id, deque())
        strikes.append(now)
        while strikes and strikes[0] <= now - self.config.window_s:
            strikes.popleft()
        if len(strikes) < self.config.max_bad_streams:
            self._forget_stale(now)
            return False
        del self._strikes[peer_id]
        self._banned_until[peer_id] = now + self.config.ban_s
        self.metrics.peer_dropped("bad_streams")
        log.warning(
            "disconnecting %s: %d bad streams within %.0f s; refused for %.0f s",
            peer_id[-8:],
            len(strikes),
            self.config.window_s,
            self.config.ban_s,
        )
        return True

    def _forget_stale(self, now: float) -> None:
        """Keep the tables bounded by live entries: peers whose strikes all left the window are dropped."""
        if len(self._strikes) + len(self._banned_until) <= PRUNE_ABOVE_PEERS:
            return
        for peer_id in [p for p, s in self._strikes.items() if not s or s[-1] <= now - self.config.window_s]:
            del self._strikes[peer_id]
        for peer_id in [p for p, until in self._banned_until.items() if until <= now]:
            del self._banned_until[peer_id]

    def wrap(self, inner: NetStreamHandler, disconnect: Callable[[str], None]) -> NetStreamHandler:
        """The network's per-stream handler, contained: nothing ``inner`` raises leaves this stream's task.

        ``disconnect(peer_id)`` is asked (not awaited: it runs outside this stream's connection) to drop a peer.
        """

        async def guarded(stream: INetStream) -> None:
            peer_id = str(stream.muxed_conn.peer_id)
            if self.is_banned(peer_id):
                self.metrics.refuse_banned()
                disconnect(peer_id)
                await reset_quietly(stream)
                return
            try:
                await inner(stream)
            except* Exception as group:  # trio.Cancelled is a BaseException: it passes through untouched
                protocol = stream.get_protocol() or UNNEGOTIATED
                if self.strike(peer_id, str(protocol), describe_error(group)):
                    disconnect(peer_id)
                await reset_quietly(stream)

        return guarded


class BanNotifee(INotifee):
    """Drops a banned peer's new connection as soon as it is up, before it opens any stream."""

    def __init__(self, guard: StreamGuard, disconnect: Callable[[str], None]) -> None:
        self.guard = guard
        self.disconnect = disconnect

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer_id = str(conn.muxed_conn.peer_id)
        if self.guard.is_banned(peer_id):
            self.guard.metrics.refuse_banned()
            self.disconnect(peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: object) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: object) -> None:
        pass


class GuardedPubsub(Pubsub):
    """Pubsub whose inbound RPC streams end, not raise, on bytes that are not gossipsub RPCs, and say so.

    py-libp2p lets protobuf's DecodeError and any error from handling a decoded RPC escape into the host's nursery
    (which ends the node), and ends a stream silently on an oversized length prefix or a truncated RPC. Both kinds
    are raised from here as hostile, for the stream guard to count and refuse.
    """

    async def stream_handler(self, stream: INetStream) -> None:
        watched = _RpcFraming(stream, self.max_inbound_rpc_size)
        try:
            await self.continuously_read_stream(watched)  # type: ignore[arg-type]
        except Exception:
            self._handle_dead_peer(stream.muxed_conn.peer_id)
            raise
        if watched.too_large is not None:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"RPC declares {watched.too_large} bytes, limit is {self.max_inbound_rpc_size}"
            )
        if watched.inside_frame:
            raise ProtocolError(ErrorCode.MALFORMED, "stream ended inside an RPC (truncated)")

    async def push_msg(self, msg_forwarder: ID, msg: object) -> None:
        """A relayed message the library cannot handle is dropped; it must not end the pubsub service."""
        if msg_forwarder == self.my_id:
            await super().push_msg(msg_forwarder, msg)  # type: ignore[arg-type]
            return
        try:
            await super().push_msg(msg_forwarder, msg)  # type: ignore[arg-type]
        except Exception as err:
            log.warning("dropped a gossip message relayed by %s: %s", str(msg_forwarder)[-8:], describe_error(err))


class _RpcFraming:
    """A stream as the pubsub reader sees it, following the varint-prefixed frames it reads, so that once the
    reader has ended the stream we know whether it ended inside a frame or on a length over the limit."""

    def __init__(self, stream: INetStream, max_frame_bytes: int) -> None:
        self._stream = stream
        self._max = max_frame_bytes
        self._prefix = bytearray()
        self._remaining = 0
        self.too_large: int | None = None  # the declared length, when over the limit

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    @property
    def inside_frame(self) -> bool:
        return bool(self._prefix) or self._remaining > 0

    async def read(self, n: int | None = None) -> bytes:
        data = await self._stream.read(n)
        self._follow(data)
        return data

    def _follow(self, data: bytes) -> None:
        i = 0
        while i < len(data):
            if self._remaining:
                taken = min(self._remaining, len(data) - i)
                self._remaining -= taken
                i += taken
                continue
            self._prefix.append(data[i])
            i += 1
            if data[i - 1] & 0x80 and len(self._prefix) < MAX_VARINT_BYTES:
                continue
            length = sum((b & 0x7F) << (7 * k) for k, b in enumerate(self._prefix))
            self._prefix.clear()
            if length > self._max:
                self.too_large = length
            self._remaining = length


async def reset_quietly(stream: INetStream) -> None:
    """Reset a stream the remote may already have torn down; never raises (cancellation aside)."""
    try:
        with trio.move_on_after(1.0):
            await stream.reset()
    except Exception as err:
        log.debug("reset of a refused stream failed: %s", err)
