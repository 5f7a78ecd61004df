"""Finding peers: dial the bootstrap list (with back-off), ask connected peers for theirs (peer exchange on
`/swarm/peers/1.0.0`, with their announces, serving peers first: a joiner can route before gossip has told it
anything), and dial peers heard of in gossip, so a chain bootstrap converges to a full view.

Knows the host and the membership table; nothing about serving or training.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import trio

from comms.errors import CommsError
from comms.host import P2PHost
from comms.streams import MessageStream
from protocols import STREAM_LIMITS, PeerRecord, PeersReply, PeersRequest, ProtocolError
from protocols.errors import ErrorCode
from protocols.ids import PEERS_PROTOCOL
from swarm.runtime.membership import Membership

log = logging.getLogger(__name__)

BOOTSTRAP_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
ISOLATED_REASK_S = (4.0, 8.0, 15.0, 30.0)  # connected without a gossip mesh link this long: ask bootstrap again


class Discovery:
    """Keeps this node connected: bootstrap, peer exchange, and dialling announced peers."""

    def __init__(
        self,
        host: P2PHost,
        membership: Membership,
        bootstrap: list[str],
        max_dial_peers: int,
        request_timeout_s: float,
        gossip_isolated: Callable[[], bool] = lambda: False,
    ) -> None:
        """``gossip_isolated``: True while this node has no gossip mesh link; while it also has connections (its
        subscriptions met nobody's, or its mesh peers left), bootstrap is dialled and asked for peers again."""
        self.host = host
        self.gossip_isolated = gossip_isolated
        self.membership = membership
        self.bootstrap = list(bootstrap)
        self.max_dial_peers = max_dial_peers
        self.request_timeout_s = request_timeout_s
        self._dialing: set[str] = set()
        self._known_addrs: dict[str, list[str]] = {}
        self._wakeup = trio.Event()
        host.set_handler(PEERS_PROTOCOL, self._serve_peers, STREAM_LIMITS)

    # --------------------------------------------------------------- serving peer exchange

    async def _serve_peers(self, stream: MessageStream, remote: str) -> None:
        request = await stream.receive(self.request_timeout_s)
        if not isinstance(request, PeersRequest):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected peers_request, got {request.TYPE}", field="type")
        entries = [e for e in self.membership.entries() if e.announce.peer_id != remote]
        random.shuffle(entries)
        if request.full:  # a joiner's first view: serving peers first, each with its announce
            entries.sort(key=lambda e: "serve" not in e.announce.roles)
        records = [
            PeerRecord(e.announce.peer_id, e.announce.addrs, e.announce if request.full else None)
            for e in entries[: request.limit]
        ]
        await stream.send(PeersReply(peers=records))

    # --------------------------------------------------------------- asking for peers

    async def exchange_with(self, peer_id: str) -> list[PeerRecord]:
        """Ask ``peer_id`` for the peers it knows."""
        stream = await self.host.open_stream(peer_id, PEERS_PROTOCOL, STREAM_LIMITS)
        try:
            await stream.send(PeersRequest(limit=64, full=True))
            reply = await stream.receive_reply(PeersReply, self.request_timeout_s)
        finally:
            await stream.close()
        return reply.peers  # type: ignore[attr-defined]

    def note_peer(self, peer_id: str, addrs: list[str]) -> None:
        """Remember where a peer can be dialled and wake the dialler."""
        if peer_id != self.host.peer_id and addrs:
            self._known_addrs[peer_id] = list(addrs)
            self._wakeup.set()

    async def _dial_and_exchange(self, addr: str, *, bootstrap: bool = False) -> str | None:
        try:
            remote = await self.host.connect(addr)
        except CommsError as err:
            log.debug("dial %s failed: %s", addr, err)
            return None
        if bootstrap:
            log.info("linked to bootstrap peer %s", remote[-8:])
        try:
            records = await self.exchange_with(remote)
            self.membership.answered(remote)
            for record in records:
                self.note_peer(record.peer_id, [a for a in record.addrs if a.endswith(record.peer_id)])
                announce = record.announce
                if announce is not None and self.membership.observe(announce, hearsay=True):
                    roles = ",".join(announce.roles) or "no roles"
                    log.info("peer joined: %s (%s; heard from %s)", announce.peer_id, roles, remote[-8:])
        except (CommsError, ProtocolError) as err:
            log.debug("peer exchange with %s failed: %s", remote[-8:], err)
        return remote

    async def _dial_known(self, peer_id: str) -> None:
        self._dialing.add(peer_id)
        try:
            for addr in self._known_addrs.get(peer_id, []):
                if await self._dial_and_exchange(addr) == peer_id:
                    return
            # Unreachable: forget it until it announces itself again.
            self._known_addrs.pop(peer_id, None)
        finally:
            self._dialing.discard(peer_id)

    # --------------------------------------------------------------- services

    async def run_bootstrap(self) -> None:
        """Dial every bootstrap peer until connected, retrying with back-off; dial and ask them again whenever all
        links drop, or while links stay up without a single gossip mesh link (`ISOLATED_REASK_S`, backing off)."""
        if not self.bootstrap:
            return
        attempt = 0
        isolated_since: float | None = None
        reasks = 0
        while True:
            now = trio.current_time()
            connected = bool(self.host.connected_peers())
            if connected and self.gossip_isolated():
                isolated_since = now if isolated_since is None else isolated_since
            else:
                isolated_since, reasks = None, 0
            wait_s = ISOLATED_REASK_S[min(reasks, len(ISOLATED_REASK_S) - 1)]
            reask = isolated_since is not None and now - isolated_since >= wait_s
            if not connected or attempt == 0 or reask:
                if reask:
                    log.info("connected but no gossip mesh link for %.0f s: asking the bootstrap peers again", wait_s)
                    isolated_since, reasks = now, reasks + 1
                results = []
                for addr in self.bootstrap:
                    results.append(await self._dial_and_exchange(addr, bootstrap=True))
                if any(results):
                    log.info("connected to bootstrap peer(s): %s", ", ".join(r[-8:] for r in results if r))
                    attempt = 1
                else:
                    attempt += 1
                    log.warning("no bootstrap peer reachable yet (attempt %d)", attempt)
            delay = BOOTSTRAP_BACKOFF_S[min(attempt, len(BOOTSTRAP_BACKOFF_S) - 1)]
            await trio.sleep(delay * random.uniform(0.8, 1.2))

    async def run_dialer(self) -> None:
        """Dial peers learned from gossip or exchange that we are not connected to, up to max_dial_peers."""
        async with trio.open_nursery() as nursery:
            while True:
                with trio.move_on_after(2.0):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                connected = self.host.connected_peers()
                budget = self.max_dial_peers - len(connected) - len(self._dialing)
                for peer_id in list(self._known_addrs):
                    if budget <= 0:
                        break
                    if peer_id in connected or peer_id in self._dialing:
                        continue
                    budget -= 1
                    nursery.start_soon(self._dial_known, peer_id)

    def forget(self, peer_id: str) -> None:
        self._known_addrs.pop(peer_id, None)
