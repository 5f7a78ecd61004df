"""Sending one generation request through the swarm: pick the peer with the best predicted TTFT for the model
(this node itself when it serves it), move on when a peer answers OVERLOADED, and when a peer dies mid-stream
resume on another from the prompt plus the tokens already received: no token lost or duplicated.

Used by the Python client and the HTTP gateway. Knows the node (membership, host, serve role) and the generate
protocol; the engine work of the local path is in swarm.generation.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import trio

from comms.errors import CommsError
from comms.streams import StreamClosedError
from protocols import (
    STREAM_LIMITS,
    Cancel,
    ChatMessage,
    ErrorCode,
    ErrorReply,
    GenerateAccepted,
    GenerateDone,
    GenerateRejected,
    GenerateRequest,
    PeerAnnounce,
    ProtocolError,
    SwarmError,
    TokenChunk,
)
from protocols.ids import GENERATE_PROTOCOL
from swarm.generation import Rejected, run_local
from swarm.routing import DEAD_PEER_BACKOFF_S, RouteState, rank_peers

log = logging.getLogger(__name__)


class NoPeerAvailable(SwarmError):
    """No peer could take the request before the deadline."""


class GenerationRefused(SwarmError):
    """A peer refused the request for a reason another peer would share (bad request)."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(f"{code.name}" + (f" ({field})" if field else "") + f": {message}")
        self.code = code
        self.field = field


@dataclass
class TokenDelta:
    """New tokens of a streamed answer, their text, and the peer that produced them."""

    text: str
    token_ids: list[int]
    peer_id: str


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    peers: list[str]
    usage: dict[str, int]
    timings: dict[str, float | None]
    request_id: str
    model_id: str = ""
    resumes: int = 0


@dataclass
class Progress:
    """What the asker has received so far, across peers."""

    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    done: GenerateDone | None = None
    model_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None


class _PeerFailed(Exception):
    """This attempt ended without GenerateDone; the request can resume elsewhere."""


class SwarmGenerator:
    """Routes and runs requests for one asker (a client, or a node's HTTP gateway)."""

    def __init__(
        self, node: Any, *, timeout_s: float = 120.0, stall_timeout_s: float = 30.0, routing: str = "ttft"
    ) -> None:
        self.node = node
        self.timeout_s = timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.routing = routing
        self.state = RouteState()

    def _announces(self) -> list[PeerAnnounce]:
        """Every serving peer known now, this node included when its engine is up."""
        announces = self.node.server_announces()
        own = self.node.serving_view()
        return announces if own is None else [own, *announces]

    def servers(self, model: str | None = None) -> list[PeerAnnounce]:
        """Serving peers known now, best first for ``model``."""
        return rank_peers(self._announces(), model, RouteState(), policy=self.routing)

    async def generate(self, request: GenerateRequest) -> GenerationResult:
        progress = Progress()
        async for _ in self.run(request, progress):
            pass
        return self.result(progress)

    @staticmethod
    def request(prompt: str | None, kwargs: dict[str, Any]) -> GenerateRequest:
        kwargs = dict(kwargs)
        model = kwargs.pop("model", "") or ""
        messages = kwargs.pop("messages", None)
        if messages is not None:
            messages = [m if isinstance(m, ChatMessage) else ChatMessage(m["role"], m["content"]) for m in messages]
        request = GenerateRequest(
            request_id=kwargs.pop("request_id", None) or uuid.uuid4().hex, model_id=model, prompt=prompt,
            messages=messages, **kwargs,
        )  # fmt: skip
        request.validate()
        return request

    def result(self, progress: Progress) -> GenerationResult:
        done = progress.done
        assert done is not None
        timings = {
            "ttft_ms": 1000 * (progress.first_token_at - progress.started) if progress.first_token_at else None,
            "e2e_ms": 1000 * (time.perf_counter() - progress.started),
            "server_ttft_ms": done.timings.ttft_ms,
            "server_tpot_ms": done.timings.tpot_ms,
        }
        return GenerationResult(
            text="".join(progress.text), token_ids=list(progress.token_ids), finish_reason=done.finish_reason,
            peers=list(progress.peers), usage={"prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": len(progress.token_ids)}, timings=timings, request_id=done.request_id,
            model_id=progress.model_id, resumes=max(len(progress.peers) - 1, 0),
        )  # fmt: skip

    async def run(self, request: GenerateRequest, progress: Progress) -> AsyncIterator[TokenDelta]:
        deadline = trio.current_time() + self.timeout_s
        while progress.done is None:
            peer = await self._pick_peer(request, deadline)
            attempt = GenerateRequest(**{**vars(request), "continuation_token_ids": list(progress.token_ids)})
            if len(progress.token_ids) >= request.max_new_tokens:  # died right after the last token
                progress.done = GenerateDone(request.request_id, "length")
                break
            queued = self.state.awaiting_first_token
            queued[peer] = queued.get(peer, 0) + 1
            waiting = True
            try:
                async for delta in self._attempt(peer, attempt, progress):
                    if waiting:
                        queued[peer] -= 1
                        waiting = False
                    yield delta
            except _PeerFailed as err:
                log.info("peer %s failed mid-request (%s); resuming elsewhere", peer[-8:], err)
                self.state.avoid(peer, DEAD_PEER_BACKOFF_S)
            finally:
                if waiting:
                    queued[peer] -= 1

    async def _pick_peer(self, request: GenerateRequest, deadline: float) -> str:
        model = request.model_id
        while True:
            ranked = rank_peers(
                self._announces(), model, self.state, policy=self.routing, ttft_ms=request.ttft_ms,
                tpot_ms=request.tpot_ms,
            )  # fmt: skip
            reachable = self.node.host.connected_peers() | {self.node.peer_id}
            ranked.sort(key=lambda a: a.peer_id not in reachable)  # stable: prefer peers we already reach
            if ranked:
                return ranked[0].peer_id
            if trio.current_time() >= deadline:
                raise NoPeerAvailable(
                    f"no peer serving {model or 'any model'} could take the request within {self.timeout_s:.0f} s"
                    f" ({len(self._announces())} serving peers known)"
                )
            await trio.sleep(min(max(self.state.earliest_retry_s(), 0.05), 0.5))

    async def _attempt(self, peer: str, request: GenerateRequest, progress: Progress) -> AsyncIterator[TokenDelta]:
        if peer == self.node.peer_id:
            async for delta in self._attempt_local(request, progress):
                yield delta
            return
        try:
            stream = await self.node.host.open_stream(peer, GENERATE_PROTOCOL, STREAM_LIMITS)
        except CommsError as err:
            raise _PeerFailed(f"cannot open stream: {err}") from err
        try:
            await stream.send(request)
            first = await stream.receive(self.stall_timeout_s)
            if isinstance(first, GenerateRejected | ErrorReply):
                self._on_rejected(peer, first.error_code, first.message, first.field, first.retry_after_ms)
                return
            if not isinstance(first, GenerateAccepted):
                raise _PeerFailed(f"unexpected {first.TYPE}")
            progress.peers.append(peer)
            progress.model_id = first.model_id
            while progress.done is None:
                delta = self._apply(await stream.receive(self.stall_timeout_s), progress, peer)
                if delta is not None:
                    yield delta
        except (StreamClosedError, ProtocolError) as err:
            raise _PeerFailed(str(err)) from err
        finally:
            with trio.CancelScope(shield=True):
                if progress.done is None:
                    with trio.move_on_after(0.5):
                        try:
                            await stream.send(Cancel(request.request_id))
                        except StreamClosedError:
                            pass
                    await stream.reset()
                else:
                    await stream.close()

    async def _attempt_local(self, request: GenerateRequest, progress: Progress) -> AsyncIterator[TokenDelta]:
        """This node serves the model: run on its own engine, no stream involved."""
        peer = self.node.peer_id
        try:
            async with run_local(self.node.serve_role.engine, request) as run:
                progress.peers.append(peer)
                progress.model_id = run.accepted.model_id
                async for message in run.events:
                    delta = self._apply(message, progress, peer)
                    if delta is not None:
                        yield delta
                    if progress.done is not None:
                        return
        except Rejected as err:
            self._on_rejected(peer, err.code, err.reason, err.field, err.retry_after_ms)
            return
        raise _PeerFailed("local engine stopped mid-request")

    def _apply(self, message: Any, progress: Progress, peer: str) -> TokenDelta | None:
        if isinstance(message, TokenChunk):
            return self._take(message, progress, peer)
        if isinstance(message, GenerateDone):
            if message.finish_reason == "error":
                raise _PeerFailed(message.error or "engine error")
            progress.done = message
            return None
        raise _PeerFailed(f"unexpected {type(message).__name__} in a token stream")

    def _on_rejected(
        self, peer: str, code: ErrorCode, message: str, field: str | None, retry_after_ms: int | None
    ) -> None:
        """OVERLOADED and peer-specific refusals move on to another peer; a bad request fails for good."""
        if code == ErrorCode.OVERLOADED:
            self.state.avoid(peer, (retry_after_ms or 100) / 1000)
        elif code in (ErrorCode.MODEL_MISMATCH, ErrorCode.INTERNAL, ErrorCode.NOT_FOUND):
            self.state.avoid(peer, DEAD_PEER_BACKOFF_S)
        else:
            raise GenerationRefused(code, message, field)

    @staticmethod
    def _take(chunk: TokenChunk, progress: Progress, peer: str) -> TokenDelta | None:
        """Append a chunk's tokens, skipping any this asker already has (no gaps, no duplicates)."""
        have = len(progress.token_ids)
        if chunk.index > have:
            raise _PeerFailed(f"gap in tokens: expected index {have}, got {chunk.index}")
        new = chunk.token_ids[have - chunk.index :]
        if not new:
            return None
        if progress.first_token_at is None:
            progress.first_token_at = time.perf_counter()
        progress.token_ids.extend(new)
        text = chunk.text if chunk.index == have else ""
        progress.text.append(text)
        return TokenDelta(text, new, peer)
