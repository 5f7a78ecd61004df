"""Load on demand: serve `/swarm/load/1.0.0` (this node's serving load, asked by routers), and ask the sampled
candidates of a route for theirs when the copy in the membership table is older than `load_max_age_s`.

Every query has a deadline (`load_query_timeout_s`) and a size limit (`LOAD_LIMITS`); replies are bounded at
decoding (`check_load`), so a peer answering absurd figures is refused, counted and avoided for a while. Knows the
host, the membership table and the node's serving view; nothing about how routes are ranked.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from comms.errors import CommsError
from comms.streams import MessageStream
from protocols import PeerAnnounce, ProtocolError
from protocols.errors import ErrorCode
from protocols.ids import LOAD_PROTOCOL
from protocols.status import LOAD_LIMITS, LoadQuery, LoadReply
from swarm.gateway.route_sample import is_stale

log = logging.getLogger(__name__)
FAILED_PROBE_AVOID_S = 5.0


class LoadProbe:
    """Serves this node's load and refreshes the load of route candidates."""

    def __init__(self, node: Any) -> None:
        self.node = node
        net = node.config.network
        self.max_age_s = net.load_max_age_s
        self.timeout_s = net.load_query_timeout_s
        self.queries = 0
        self.failures = 0
        node.host.set_handler(LOAD_PROTOCOL, self._serve, LOAD_LIMITS)

    async def _serve(self, stream: MessageStream, remote: str) -> None:
        request = await stream.receive(self.timeout_s)
        if not isinstance(request, LoadQuery):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected load_query, got {request.TYPE}", field="type")
        view = self.node.serving_view()
        if view is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "this node serves no model now")
        await stream.send(LoadReply(load=view.load, model_hash=view.model_hash))

    async def ask(self, peer_id: str) -> LoadReply:
        """One peer's load now; CommsError/ProtocolError when it cannot say within the deadline."""
        self.queries += 1
        with trio.fail_after(self.timeout_s):
            stream = await self.node.host.open_stream(peer_id, LOAD_PROTOCOL, LOAD_LIMITS)
            try:
                await stream.send(LoadQuery(model_id=""))
                reply = await stream.receive_reply(LoadReply, self.timeout_s)
            finally:
                await stream.close()
        return reply  # type: ignore[return-value]

    async def refresh(self, candidates: list[PeerAnnounce], state: Any) -> list[PeerAnnounce]:
        """``candidates`` with the stale loads asked again, concurrently; a peer that cannot answer in time (or
        answers out of bounds) is dropped from this route and avoided for `FAILED_PROBE_AVOID_S`."""
        membership = self.node.membership
        now = membership.now()
        stale = []
        for a in candidates:
            entry = membership.get(a.peer_id)
            if entry is not None and is_stale(entry.load_at, now, self.max_age_s):
                stale.append(a.peer_id)
        failed: set[str] = set()

        async def _one(peer_id: str) -> None:
            try:
                reply = await self.ask(peer_id)
            except (CommsError, ProtocolError, trio.TooSlowError) as err:
                self.failures += 1
                if isinstance(err, ProtocolError):
                    self.node.metrics.refuse(err.code)
                log.debug("load query to %s failed: %s", peer_id[-8:], err)
                failed.add(peer_id)
                state.avoid(peer_id, FAILED_PROBE_AVOID_S)
                return
            membership.update_load(peer_id, reply.load)

        if stale:
            async with trio.open_nursery() as nursery:
                for peer_id in stale:
                    nursery.start_soon(_one, peer_id)
        fresh = []
        for a in candidates:
            if a.peer_id in failed:
                continue
            entry = membership.get(a.peer_id)
            fresh.append(entry.announce if entry is not None else a)
        return fresh
