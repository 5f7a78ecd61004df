"""Sending one generation request through the swarm: pick the peer with the best predicted TTFT for the model
(this node itself when it serves it), move on when a peer answers OVERLOADED, and when a peer dies mid-stream
resume on another peer serving the same weights (model hash) from the prompt plus the tokens already received:
no token lost or duplicated. The text is decoded here from all the ids (swarm.gateway.answer_text) whenever a tokenizer
for the model is at hand, so text a dead peer held back and stop strings that span the switch are not lost.

Used by the Python client and the HTTP gateway. Knows the node (membership, host, serve role) and the generate
protocol; the engine work of the local path is in swarm.gateway.generation.
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
    TokenLogprobs,
    Usage,
)
from protocols.ids import GENERATE_PROTOCOL
from swarm.gateway.answer_text import AnswerText, answer_text, tokenizer_for
from swarm.gateway.generation import Rejected, run_local
from swarm.gateway.route_sample import sample_candidates
from swarm.gateway.routing import DEAD_PEER_BACKOFF_S, RouteState, prompt_tokens_of, rank_peers

log = logging.getLogger(__name__)


class NoPeerAvailable(SwarmError):
    """No peer could take the request before the deadline."""


class ResumeUnavailable(NoPeerAvailable):
    """A peer died mid-answer and no live peer serves the same weights (model hash) to finish it."""


class GenerationRefused(SwarmError):
    """A peer refused the request for a reason another peer would share (bad request)."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(f"{code.name}" + (f" ({field})" if field else "") + f": {message}")
        self.code = code
        self.field = field


@dataclass
class TokenDelta:
    """New tokens of a streamed answer (of sample `index` when n > 1), their text, the peer that produced them,
    and their log-probabilities when asked for."""

    text: str
    token_ids: list[int]
    peer_id: str
    index: int = 0
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class GeneratedChoice:
    """One of the n samples of an answer."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprobs] | None = None


@dataclass
class SampleProgress:
    """What the asker has received of one sample other than sample 0 (those never resume: no tokenizer needed)."""

    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)


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
    choices: list[GeneratedChoice] = field(default_factory=list)  # every sample, choice 0 included


@dataclass
class Progress:
    """What the asker has received so far, across peers."""

    token_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)
    done: GenerateDone | None = None
    model_id: str = ""
    model_hash: str = ""  # of the first peer that accepted: every resume must be on the same weights
    prompt_tokens: int = 0
    answer: AnswerText | None = None  # decodes the text from the ids; None without a tokenizer for the model
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)  # of sample 0's tokens, when asked for
    samples: dict[int, SampleProgress] = field(default_factory=dict)  # samples 1..n-1
    n: int = 1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + sum(len(p.token_ids) for p in self.samples.values())


class _PeerFailed(Exception):
    """This attempt ended without GenerateDone; the request can resume elsewhere."""


class SwarmGenerator:
    """Routes and runs requests for one asker (a client, or a node's HTTP gateway)."""

    def __init__(
        self,
        node: Any,
        *,
        timeout_s: float = 120.0,
        stall_timeout_s: float = 30.0,
        routing: str = "ttft",
        tokenizer: Any = None,
    ) -> None:
        self.node = node
        self.tokenizer = tokenizer  # for models that are neither embedded nor served by this node
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
        return self.result(progress, request)

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

    def result(self, progress: Progress, request: GenerateRequest | None = None) -> GenerationResult:
        done = progress.done
        assert done is not None
        n = request.n if request is not None else 1
        wants_logprobs = request is not None and request.logprobs is not None
        reasons = list(done.finish_reasons) or [done.finish_reason]
        choices = [GeneratedChoice(0, "".join(progress.text), list(progress.token_ids), reasons[0],
                                   list(progress.logprobs) if wants_logprobs else None)]  # fmt: skip
        for i in range(1, n):
            sample = progress.samples.get(i, SampleProgress())
            reason = reasons[i] if i < len(reasons) else done.finish_reason
            choices.append(GeneratedChoice(i, "".join(sample.text), list(sample.token_ids), reason,
                                           list(sample.logprobs) if wants_logprobs else None))  # fmt: skip
        timings = {
            "ttft_ms": 1000 * (progress.first_token_at - progress.started) if progress.first_token_at else None,
            "e2e_ms": 1000 * (time.perf_counter() - progress.started),
            "server_ttft_ms": done.timings.ttft_ms,
            "server_tpot_ms": done.timings.tpot_ms,
        }
        return GenerationResult(
            text="".join(progress.text), token_ids=list(progress.token_ids), finish_reason=done.finish_reason,
            peers=list(progress.peers), usage={"prompt_tokens": done.usage.prompt_tokens,
            "completion_tokens": progress.num_tokens}, timings=timings, request_id=done.request_id,
            model_id=progress.model_id, resumes=max(len(progress.peers) - 1, 0), choices=choices,
        )  # fmt: skip

    async def run(self, request: GenerateRequest, progress: Progress) -> AsyncIterator[TokenDelta]:
        deadline = trio.current_time() + self.timeout_s
        while progress.done is None:
            if len(progress.token_ids) >= request.max_new_tokens:  # died right after the last token
                last = self._end(progress, self._done(request.request_id, progress, "length"), progress.peers[-1])
                if last is not None:
                    yield last
                break
            peer = await self._pick_peer(request, progress, deadline)
            attempt = GenerateRequest(**{**vars(request), "continuation_token_ids": list(progress.token_ids)})
            queued, outstanding = self.state.awaiting_first_token, self.state.outstanding
            queued[peer] = queued.get(peer, 0) + 1
            outstanding[peer] = outstanding.get(peer, 0) + 1
            waiting = True
            try:
                async for delta in self._attempt(peer, attempt, progress):
                    if waiting:
                        queued[peer] -= 1
                        waiting = False
                    yield delta
            except _PeerFailed as err:
                self.state.avoid(peer, DEAD_PEER_BACKOFF_S)
                if request.n > 1 and progress.num_tokens:
                    # Resuming n samples would need n continuations, each forking the prompt anew.
                    raise ResumeUnavailable(
                        f"peer {peer[-8:]} failed mid-answer ({err}); answers with n > 1 do not resume"
                    ) from err
                log.info("peer %s failed mid-request (%s); resuming elsewhere", peer[-8:], err)
            finally:
                outstanding[peer] -= 1
                if waiting:
                    queued[peer] -= 1

    def _candidates(self, progress: Progress) -> list[PeerAnnounce]:
        """Announces a request may go to: once a peer has accepted it, only peers with the same model hash (the
        same weights; a model id is only a name)."""
        announces = self._announces()
        if progress.model_hash:
            announces = [a for a in announces if a.model_hash == progress.model_hash]
        return announces

    async def _sampled(self, progress: Progress, model: str | None) -> list[PeerAnnounce]:
        """Routing by predicted TTFT chooses among `route_sample` serving peers drawn at random, their loads asked
        again where older than `load_max_age_s` (power of d choices); the baselines see every candidate."""
        candidates = self._candidates(progress)
        if self.routing != "ttft":
            return candidates
        candidates = [a for a in candidates if not self.state.avoided(a.peer_id)]
        sample = sample_candidates(candidates, model, self.node.config.network.route_sample)
        own = [a for a in sample if a.peer_id == self.node.peer_id]
        others = [a for a in sample if a.peer_id != self.node.peer_id]
        return own + await self.node.load_probe.refresh(others, self.state)

    async def _pick_peer(self, request: GenerateRequest, progress: Progress, deadline: float) -> str:
        model = request.model_id
        while True:
            ranked = rank_peers(
                await self._sampled(progress, model), model, self.state, policy=self.routing, ttft_ms=request.ttft_ms,
                tpot_ms=request.tpot_ms,
                prompt_tokens=prompt_tokens_of(request.prompt_token_ids, request.prompt, request.messages),
            )  # fmt: skip
            reachable = self.node.host.connected_peers() | {self.node.peer_id}
            ranked.sort(key=lambda a: a.peer_id not in reachable)  # stable: prefer peers we already reach
            if ranked:
                return ranked[0].peer_id
            if trio.current_time() >= deadline and progress.model_hash:
                raise ResumeUnavailable(
                    f"no live peer serves model hash {progress.model_hash[:16]} (the weights this answer started"
                    f" on) to finish it within {self.timeout_s:.0f} s; {len(progress.token_ids)} tokens received"
                )
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
        finished = False
        try:
            await stream.send(request)
            first = await stream.receive(self.stall_timeout_s)
            if isinstance(first, GenerateRejected | ErrorReply):
                self._on_rejected(peer, first.error_code, first.message, first.field, first.retry_after_ms)
                return
            if not isinstance(first, GenerateAccepted):
                raise _PeerFailed(f"unexpected {first.TYPE}")
            if not self._accept(peer, first, request, progress):
                return
            while progress.done is None:
                message = await stream.receive(self.stall_timeout_s)
                finished = isinstance(message, GenerateDone)
                delta = self._apply(message, progress, peer)
                if delta is not None:
                    yield delta
        except (StreamClosedError, ProtocolError) as err:
            raise _PeerFailed(str(err)) from err
        finally:
            with trio.CancelScope(shield=True):
                if not finished:  # includes an answer this asker ended itself on a stop string
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
                if not self._accept(peer, run.accepted, request, progress):
                    return
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

    def _accept(self, peer: str, accepted: GenerateAccepted, request: GenerateRequest, progress: Progress) -> bool:
        """Take a peer's acceptance; False (and the peer avoided) when it runs other weights than the answer's."""
        if progress.model_hash and accepted.model_hash != progress.model_hash:
            log.warning("peer %s accepted with model hash %s, not %s; not resuming there", peer[-8:],
                        accepted.model_hash[:12], progress.model_hash[:12])  # fmt: skip
            self.state.avoid(peer, DEAD_PEER_BACKOFF_S)
            return False
        if (accepted.n, accepted.logprobs) != (request.n, request.logprobs):
            log.warning("peer %s cannot give n=%d samples with logprobs=%s (it speaks an older protocol)",
                        peer[-8:], request.n, request.logprobs)  # fmt: skip
            self.state.avoid(peer, DEAD_PEER_BACKOFF_S)
            return False
        if not progress.peers:
            progress.n = request.n
            progress.model_id, progress.model_hash = accepted.model_id, accepted.model_hash
            progress.prompt_tokens = accepted.prompt_tokens
            local = self.node.serve_role.engine if self.node.serve_role is not None else None
            tokenizer = tokenizer_for(accepted.model_id, accepted.model_hash, local, self.tokenizer)
            progress.answer = answer_text(tokenizer, request) if tokenizer is not None else None
        progress.peers.append(peer)
        return True

    def _apply(self, message: Any, progress: Progress, peer: str) -> TokenDelta | None:
        if isinstance(message, TokenChunk):
            return self._take(message, progress, peer)
        if isinstance(message, GenerateDone):
            if message.finish_reason == "error":
                raise _PeerFailed(message.error or "engine error")
            return self._end(progress, message, peer)
        raise _PeerFailed(f"unexpected {type(message).__name__} in a token stream")

    @staticmethod
    def _done(request_id: str, progress: Progress, reason: str) -> GenerateDone:
        """The end of an answer this asker decides (a stop string it found, max_new_tokens reached)."""
        usage = Usage(prompt_tokens=progress.prompt_tokens, completion_tokens=len(progress.token_ids))
        return GenerateDone(request_id, reason, usage=usage)

    @staticmethod
    def _end(progress: Progress, done: GenerateDone, peer: str) -> TokenDelta | None:
        """Finish the answer; the text held back until now, as a last delta."""
        progress.done = done
        if progress.answer is None:
            return None
        text = progress.answer.finish()
        if not text:
            return None
        progress.text.append(text)
        return TokenDelta(text, [], peer)

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

    def _take(self, chunk: TokenChunk, progress: Progress, peer: str) -> TokenDelta | None:
        """Append a chunk's tokens, skipping any this asker already has (no gaps, no duplicates), and their text:
        decoded here when a tokenizer is at hand, else the peer's own."""
        if chunk.choice:
            return self._take_sample(chunk, progress, peer)
        have = len(progress.token_ids)
        if chunk.index > have:
            raise _PeerFailed(f"gap in tokens: expected index {have}, got {chunk.index}")
        new = chunk.token_ids[have - chunk.index :]
        if not new:
            return None
        if progress.first_token_at is None:
            progress.first_token_at = time.perf_counter()
        if progress.answer is None:
            text = chunk.text if chunk.index == have else ""
        else:
            text, taken = progress.answer.add(new)
            new = new[:taken]
        progress.token_ids.extend(new)
        progress.text.append(text)
        logprobs = None
        if chunk.logprobs is not None:
            skip = have - chunk.index
            logprobs = chunk.logprobs[skip : skip + len(new)]
            progress.logprobs.extend(logprobs)
        if progress.answer is not None and progress.answer.stopped and progress.n == 1:
            # A stop string this asker found (one the serving peer could not see if it spans a failover; with
            # n > 1 there is no failover, and the peer ends each sample at its own stop string).
            progress.done = self._done(chunk.request_id, progress, "stop")
        return TokenDelta(text, new, peer, 0, logprobs)

    @staticmethod
    def _take_sample(chunk: TokenChunk, progress: Progress, peer: str) -> TokenDelta | None:
        """Tokens of a sample other than 0, with the peer's text (such samples never span a failover)."""
        if chunk.choice >= progress.n:
            raise _PeerFailed(f"sample {chunk.choice} of a request for {progress.n}")
        sample = progress.samples.setdefault(chunk.choice, SampleProgress())
        if chunk.index != len(sample.token_ids):
            raise _PeerFailed(f"sample {chunk.choice}: expected index {len(sample.token_ids)}, got {chunk.index}")
        sample.token_ids.extend(chunk.token_ids)
        sample.text.append(chunk.text)
        sample.logprobs.extend(chunk.logprobs or [])
        return TokenDelta(chunk.text, list(chunk.token_ids), peer, chunk.choice, chunk.logprobs)
