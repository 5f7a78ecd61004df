"""The server side of `/swarm/generate/1.0.0`: admit a request on this node's engine, stream its tokens back,
and cancel it the moment the asker sends Cancel or goes away.

Knows the protocol's message order and the node's serve role; the engine work is in swarm.gateway.generation.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from comms.host import P2PHost
from comms.streams import MessageStream, StreamClosedError
from protocols import (
    STREAM_LIMITS,
    Cancel,
    ErrorCode,
    GenerateDone,
    GenerateRejected,
    GenerateRequest,
    ProtocolError,
)
from protocols.ids import GENERATE_PROTOCOL
from swarm.gateway.generation import Rejected, run_local

log = logging.getLogger(__name__)


class GenerateService:
    """Serves generation requests from peers with the engine of ``serve_role``."""

    def __init__(self, host: P2PHost, serve_role: Any, request_timeout_s: float) -> None:
        self.serve_role = serve_role
        self.request_timeout_s = request_timeout_s
        host.set_handler(GENERATE_PROTOCOL, self.handle, STREAM_LIMITS)

    async def handle(self, stream: MessageStream, remote: str) -> None:
        request = await stream.receive(self.request_timeout_s)
        if not isinstance(request, GenerateRequest):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"expected generate_request, got {request.TYPE}", field="type")
        engine = self.serve_role.engine
        if self.serve_role.failure:
            reason = f"serving failed here: {self.serve_role.failure}"
            await self._reject(stream, request, Rejected(ErrorCode.INTERNAL, reason, None, None))
            return
        if engine is None:
            await self._reject(stream, request, Rejected(ErrorCode.OVERLOADED, "model still loading", None, 1000))
            return
        try:
            async with run_local(engine, request) as run:
                await stream.send(run.accepted)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_asker, stream, request.request_id, nursery.cancel_scope)
                    async for message in run.events:
                        await stream.send(message)
                        if isinstance(message, GenerateDone):
                            break
                    nursery.cancel_scope.cancel()
        except Rejected as err:
            await self._reject(stream, request, err)
        except StreamClosedError:
            log.info("asker %s went away; request %s cancelled", remote[-8:], request.request_id)

    @staticmethod
    async def _reject(stream: MessageStream, request: GenerateRequest, err: Rejected) -> None:
        if stream.metrics is not None:
            stream.metrics.refuse(err.code)
        await stream.send(
            GenerateRejected(request.request_id, int(err.code), err.reason[:1024], err.field, err.retry_after_ms)
        )

    @staticmethod
    async def _watch_asker(stream: MessageStream, request_id: str, scope: trio.CancelScope) -> None:
        """A Cancel, or the asker closing or resetting the stream, ends the request (run_local then cancels it)."""
        while True:
            try:
                message = await stream.receive(timeout_s=3600)
            except (StreamClosedError, ProtocolError):
                break
            if isinstance(message, Cancel) and message.request_id == request_id:
                break
        scope.cancel()
