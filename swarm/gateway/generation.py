"""Running a GenerateRequest on this node's engine from the trio loop: tokenization and chat templates, admission,
and the engine thread's events turned into protocol messages on a bounded trio channel.

Used by the `/swarm/generate` handler and by the HTTP API; knows the engine's API, not the transport.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from protocols import (
    ChatMessage,
    ErrorCode,
    GenerateAccepted,
    GenerateDone,
    GenerateRequest,
    ProtocolError,
    Timings,
    TokenChunk,
    TokenLogprobs,
    Usage,
)

# The embedded model has no chat template of its own; this one is documented in the README.
SIMPLE_CHAT_TEMPLATE = "<|{role}|>\n{content}\n"
SIMPLE_CHAT_GENERATION_PROMPT = "<|assistant|>\n"


class Rejected(ProtocolError):
    """The engine refused the request; ``retry_after_ms`` is set with OVERLOADED."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None, retry_after_ms: int | None = None):
        super().__init__(code, message, field=field)
        self.retry_after_ms = retry_after_ms


def render_chat(tokenizer: Any, messages: list[ChatMessage]) -> str:
    """The prompt for a chat: the checkpoint's own template when it has one, else SIMPLE_CHAT_TEMPLATE."""
    turns = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        except Exception as err:  # a template may reject a role order it does not support
            raise Rejected(ErrorCode.BAD_REQUEST, f"chat template refused the messages: {err}", "messages") from err
    return "".join(SIMPLE_CHAT_TEMPLATE.format(role=t["role"], content=t["content"]) for t in turns) + (
        SIMPLE_CHAT_GENERATION_PROMPT
    )


def prompt_ids_of(tokenizer: Any, request: GenerateRequest) -> list[int]:
    if request.prompt_token_ids is not None:
        return list(request.prompt_token_ids)
    text = request.prompt if request.prompt is not None else render_chat(tokenizer, request.messages or [])
    if not text:
        raise Rejected(ErrorCode.BAD_REQUEST, "must be a non-empty string", "prompt")
    return list(tokenizer(text)["input_ids"])


def model_matches(engine: Any, model_id: str) -> bool:
    return not model_id or model_id in (engine.model_id, engine.config.model)


@dataclass
class LocalRun:
    accepted: GenerateAccepted
    events: trio.MemoryReceiveChannel[TokenChunk | GenerateDone]


LOGPROB_FLOOR = -9999.0  # what -inf is sent as (JSON and the wire carry finite floats only), as vLLM does


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def wire_logprobs(entries: list[Any] | None) -> list[TokenLogprobs] | None:
    """The engine's TokenLogprob entries as protocol records."""
    if entries is None:
        return None
    return [
        TokenLogprobs(e.token_id, _finite(e.logprob), [t for t, _ in e.top], [_finite(v) for _, v in e.top])
        for e in entries
    ]


def _done_message(event: Any, continuation: int) -> GenerateDone:
    timings = {k: (v if v is not None and math.isfinite(v) else None) for k, v in (event.timings or {}).items()}
    return GenerateDone(
        request_id=event.request_id,
        finish_reason=event.finish_reason,
        usage=Usage(
            prompt_tokens=int(event.usage.get("prompt_tokens", 0)) - continuation,
            completion_tokens=int(event.usage.get("completion_tokens", 0)) + continuation,
        ),
        timings=Timings(**{k: timings.get(k) for k in ("ttft_ms", "tpot_ms", "e2e_ms", "queue_ms")}),
        error=event.error,
        finish_reasons=list(event.finish_reasons) if len(event.finish_reasons) > 1 else [],
    )


@asynccontextmanager
async def run_local(engine: Any, request: GenerateRequest) -> AsyncIterator[LocalRun]:
    """Admit ``request`` on ``engine`` and yield its accepted message and event channel. Leaving the block before
    GenerateDone cancels the request (its KV is freed at once). Raises Rejected when refused."""
    from serving.errors import OverloadedError
    from serving.request import DoneEvent, GenerateParams

    if not model_matches(engine, request.model_id):
        raise Rejected(ErrorCode.MODEL_MISMATCH, f"this node serves {engine.model_id}", "model_id")
    continuation = list(request.continuation_token_ids)
    prompt_ids = prompt_ids_of(engine.tokenizer, request)
    params = GenerateParams(
        prompt_token_ids=prompt_ids + continuation, max_new_tokens=request.max_new_tokens - len(continuation),
        temperature=request.temperature, top_k=request.top_k, top_p=request.top_p, seed=request.seed,
        stop=list(request.stop), ttft_ms=request.ttft_ms, tpot_ms=request.tpot_ms,
        priority=engine.config.clamp_priority(request.priority),
        request_id=request.request_id, n=request.n, logprobs=request.logprobs,
        presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty, ignore_eos=request.ignore_eos,
    )  # fmt: skip
    send, receive = trio.open_memory_channel[TokenChunk | GenerateDone](request.n * params.max_new_tokens + 4)
    token = trio.lowlevel.current_trio_token()
    position = [len(continuation)] * request.n  # per sample: where its next chunk starts in its completion
    finished = [False]

    def _push(message: TokenChunk | GenerateDone) -> None:  # runs on the trio loop
        try:
            send.send_nowait(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.WouldBlock):
            pass  # the consumer is gone; the request was or will be cancelled

    def _sink(event: Any) -> None:  # runs on the engine thread: never blocks
        if isinstance(event, DoneEvent):
            finished[0] = True
            message: TokenChunk | GenerateDone = _done_message(event, len(continuation))
        else:
            message = TokenChunk(event.request_id, position[event.index], list(event.token_ids), event.text,
                                 event.index, wire_logprobs(event.logprobs))  # fmt: skip
            position[event.index] += len(event.token_ids)
        try:
            token.run_sync_soon(_push, message)
        except trio.RunFinishedError:
            pass

    try:
        engine.submit(params, _sink)
    except OverloadedError as err:
        raise Rejected(ErrorCode.OVERLOADED, err.reason, err.field, err.retry_after_ms) from err
    except ProtocolError as err:
        raise Rejected(err.code, err.reason, err.field) from err
    accepted = GenerateAccepted(
        request_id=params.request_id, model_id=engine.model_id, model_hash=engine.model_hash,
        prompt_tokens=len(prompt_ids), predicted_ttft_ms=0.0, n=request.n, logprobs=request.logprobs,
    )  # fmt: skip
    try:
        async with receive:
            yield LocalRun(accepted, receive)
    finally:
        if not finished[0]:
            engine.cancel(params.request_id, "the asker went away")
