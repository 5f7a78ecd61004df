"""OpenAI-compatible endpoints on the node's HTTP API: `/v1/models`, `/v1/completions`, `/v1/chat/completions`,
non-streaming and streaming (server-sent events ending in `data: [DONE]`).

The node answers from its own engine or forwards through the swarm to the peer that can best meet the SLO, so
a node without a model is a gateway. Errors use OpenAI's JSON shape with HTTP 400, 404, 429 or 503. Which
request fields are honoured, ignored or refused is in swarm.web.openai_request; n > 1 samples and log-probabilities
come back in OpenAI's response shapes, streamed or not.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from protocols import ErrorCode, GenerateRequest, TokenLogprobs
from swarm.gateway.answer_text import tokenizer_for
from swarm.gateway.dispatch import GeneratedChoice, GenerationRefused, NoPeerAvailable, Progress, SwarmGenerator
from swarm.gateway.routing import serves_model
from swarm.web.openai_request import ApiError, build_request

STATUS_BY_CODE = {ErrorCode.BAD_REQUEST: 400, ErrorCode.TOO_LARGE: 400, ErrorCode.MALFORMED: 400,
                  ErrorCode.MODEL_MISMATCH: 404, ErrorCode.NOT_FOUND: 404, ErrorCode.OVERLOADED: 429}  # fmt: skip
__all__ = ["ApiError", "OpenAIApi", "build_request"]


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


class _LogprobsView:
    """Log-probabilities in OpenAI's shapes: chat (`content`: token, logprob, bytes, top_logprobs) and legacy
    completions (tokens, token_logprobs, top_logprobs, text_offset). A token's string is its decoded text when a
    tokenizer of the model is at hand, else vLLM's `token_id:<id>`."""

    def __init__(self, tokenizer: Any, chat: bool) -> None:
        self.tokenizer, self.chat = tokenizer, chat
        self.offsets: dict[int, int] = {}  # per choice: text offset of the next token (completions)

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else f"token_id:{token_id}"

    def render(self, index: int, entries: list[TokenLogprobs]) -> dict[str, Any]:
        if self.chat:
            return {"content": [self._chat_entry(e) for e in entries]}
        tokens = [self._token(e.token_id) for e in entries]
        offsets = []
        for token in tokens:
            offsets.append(self.offsets.get(index, 0))
            self.offsets[index] = offsets[-1] + len(token)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [self._top_map(e) for e in entries],
            "text_offset": offsets,
        }  # fmt: skip

    def _top_map(self, e: TokenLogprobs) -> dict[str, float]:
        """Legacy completions key alternatives by their text; tokens that print alike keep the best one's."""
        top: dict[str, float] = {}
        for t, v in zip(e.top_ids, e.top_logprobs, strict=True):
            top.setdefault(self._token(t), v)
        return top

    def _chat_entry(self, e: TokenLogprobs) -> dict[str, Any]:
        token = self._token(e.token_id)
        top = []
        for t, v in zip(e.top_ids, e.top_logprobs, strict=True):
            alt = self._token(t)
            top.append({"token": alt, "logprob": v, "bytes": list(alt.encode())})
        return {"token": token, "logprob": e.logprob, "bytes": list(token.encode()), "top_logprobs": top}


class OpenAIApi:
    """The three endpoints, answering through ``dispatch`` (this node's engine or the swarm)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.dispatch = SwarmGenerator(node, timeout_s=60.0)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ]

    async def models(self, _: Request) -> JSONResponse:
        ids = sorted({a.model_id for a in self.dispatch.servers(None)})
        data = [{"id": i, "object": "model", "created": 0, "owned_by": "swarm"} for i in ids]
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request) -> Response:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._serve(request, chat=True)

    async def _serve(self, http: Request, *, chat: bool) -> Response:
        try:
            body = await self._json(http)
            gen = build_request(body, chat=chat, max_n=self.node.config.serving.max_n)
            # The serving peer clamps again; clamping here too keeps an absurd figure off the wire.
            gen.priority = self.node.config.serving.clamp_priority(gen.priority)
            if not any(serves_model(a, gen.model_id) for a in self.dispatch.servers(None)):
                raise ApiError(404, f"model {gen.model_id!r} is not served in this swarm", param="model",
                               code="model_not_found")  # fmt: skip
            if body.get("stream"):
                options = body.get("stream_options") or {}
                if not isinstance(options, dict):
                    raise ApiError(400, "stream_options must be an object", param="stream_options",
                                   code="invalid_value")  # fmt: skip
                include_usage = bool(options.get("include_usage"))
                return await self._stream(gen, chat=chat, include_usage=include_usage)
            result = await self.dispatch.generate(gen)
        except ApiError as err:
            return err.response()
        except GenerationRefused as err:
            return ApiError(STATUS_BY_CODE.get(err.code, 400), str(err), param=err.field).response()
        except NoPeerAvailable as err:
            return ApiError(503, str(err), code="no_peer_available").response()
        usage = {**result.usage, "total_tokens": sum(result.usage.values())}
        view = _LogprobsView(self._tokenizer(result.model_id), chat)
        choices = []
        for c in result.choices or [GeneratedChoice(0, result.text, result.token_ids, result.finish_reason)]:
            logprobs = view.render(c.index, c.logprobs) if gen.logprobs is not None and c.logprobs is not None else None
            if chat:
                choice = {"index": c.index, "message": {"role": "assistant", "content": c.text}}
            else:
                choice = {"index": c.index, "text": c.text}
            choices.append(choice | {"finish_reason": _finish(c.finish_reason), "logprobs": logprobs})
        return JSONResponse(_envelope(gen, result.model_id, chat, stream=False) | {"choices": choices, "usage": usage})

    def _tokenizer(self, model_id: str) -> Any:
        """A tokenizer of ``model_id`` to spell tokens with, when this node has one (None otherwise)."""
        role = getattr(self.node, "serve_role", None)
        engine = role.engine if role is not None else None
        if engine is not None and engine.model_id == model_id:
            return engine.tokenizer
        return tokenizer_for(model_id, "", None, None)

    async def _json(self, http: Request) -> dict[str, Any]:
        raw = await http.body()  # the HttpGuard has refused bodies over node.max_body_bytes already
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ApiError(400, f"body is not JSON: {err}", code="invalid_json") from err
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object", code="invalid_json")
        return body

    async def _stream(self, gen: GenerateRequest, *, chat: bool, include_usage: bool) -> Response:
        progress = Progress()
        events = self.dispatch.run(gen, progress)
        # Route and admit before answering 200, so refusals still get their HTTP status.
        try:
            first = await anext(events, None)
        except GenerationRefused as err:
            raise ApiError(STATUS_BY_CODE.get(err.code, 400), str(err), param=err.field) from err
        return StreamingResponse(
            self._sse(gen, events, first, progress, chat=chat, include_usage=include_usage),
            media_type="text/event-stream",
        )

    async def _sse(self, gen: GenerateRequest, events: AsyncIterator[Any], first: Any, progress: Progress, *,
                   chat: bool, include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
        head = _envelope(gen, progress.model_id, chat, stream=True)
        view = _LogprobsView(self._tokenizer(progress.model_id), chat) if gen.logprobs is not None else None
        try:
            if chat:
                roles = [{"index": i, "delta": {"role": "assistant"}, "finish_reason": None} for i in range(gen.n)]
                yield _sse(head | {"choices": roles})
            delta = first
            while delta is not None:
                choice = {"index": delta.index}
                choice |= {"delta": {"content": delta.text}} if chat else {"text": delta.text}
                choice["logprobs"] = view.render(delta.index, delta.logprobs or []) if view is not None else None
                yield _sse(head | {"choices": [choice | {"finish_reason": None}]})
                delta = await anext(events, None)
        except (NoPeerAvailable, GenerationRefused) as err:
            yield _sse({"error": {"message": str(err), "type": "server_error", "param": None, "code": None}})
            return
        finally:
            await events.aclose()
        done = progress.done
        reasons = (done.finish_reasons or [done.finish_reason]) if done else []
        last = []
        for i in range(gen.n):
            reason = _finish(reasons[i] if i < len(reasons) else (done.finish_reason if done else "stop"))
            last.append(({"index": i, "delta": {}} if chat else {"index": i, "text": ""}) | {"finish_reason": reason})
        yield _sse(head | {"choices": last})
        if include_usage and done is not None:
            usage = {"prompt_tokens": done.usage.prompt_tokens, "completion_tokens": progress.num_tokens}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            yield _sse(head | {"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"


def _envelope(gen: GenerateRequest, model_id: str, chat: bool, *, stream: bool) -> dict[str, Any]:
    if chat:
        kind = "chat.completion.chunk" if stream else "chat.completion"
        prefix = "chatcmpl"
    else:
        kind, prefix = "text_completion", "cmpl"
    return {"id": f"{prefix}-{gen.request_id}", "object": kind, "created": int(time.time()),
            "model": model_id or gen.model_id}  # fmt: skip


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
