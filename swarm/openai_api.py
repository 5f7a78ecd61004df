"""OpenAI-compatible endpoints on the node's HTTP API: `/v1/models`, `/v1/completions`, `/v1/chat/completions`,
non-streaming and streaming (server-sent events ending in `data: [DONE]`).

The node answers from its own engine or forwards through the swarm to the peer that can best meet the SLO, so
a node without a model is a gateway. Errors use OpenAI's JSON shape with HTTP 400, 404, 429 or 503.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from protocols import ChatMessage, ErrorCode, GenerateRequest, ProtocolError
from swarm.dispatch import GenerationRefused, NoPeerAvailable, Progress, SwarmGenerator
from swarm.routing import serves_model

# OpenAI request fields we honour, and swarm extensions; anything else is refused by name.
COMMON_FIELDS = {"model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "stream",
                 "stream_options", "n", "user", "top_k", "ttft_ms", "tpot_ms", "priority"}  # fmt: skip
STATUS_BY_CODE = {ErrorCode.BAD_REQUEST: 400, ErrorCode.TOO_LARGE: 400, ErrorCode.MALFORMED: 400,
                  ErrorCode.MODEL_MISMATCH: 404, ErrorCode.NOT_FOUND: 404, ErrorCode.OVERLOADED: 429}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def response(self) -> JSONResponse:
        kind = {400: "invalid_request_error", 404: "invalid_request_error", 429: "rate_limit_error"}.get(
            self.status, "server_error"
        )
        body = {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


def _number(body: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) if kind is float else type(value) is int
    if not ok or (kind is float and not math.isfinite(value)):
        raise ApiError(400, f"{name} must be a finite {kind.__name__}", param=name, code="invalid_value")
    return kind(value)


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop", code="invalid_value")
    return stop


def build_request(body: dict[str, Any], *, chat: bool) -> GenerateRequest:
    allowed = COMMON_FIELDS | ({"messages"} if chat else {"prompt"})
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"unsupported parameter {key!r}", param=key, code="unsupported_parameter")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", param="n", code="unsupported_value")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required", param="model", code="missing_required_parameter")
    fields: dict[str, Any] = {"prompt": None, "messages": None}
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list", param="messages", code="invalid_value")
        try:
            fields["messages"] = [ChatMessage(str(m["role"]), _content(m["content"])) for m in messages]
        except (KeyError, TypeError, AttributeError) as err:
            raise ApiError(400, "each message needs a role and a text content", param="messages") from err
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, "prompt must be a non-empty string", param="prompt", code="invalid_value")
        fields["prompt"] = prompt
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 16 if not chat else 256))
    request = GenerateRequest(
        request_id=uuid.uuid4().hex, model_id=model, max_new_tokens=_number({"max_tokens": max_tokens},
        "max_tokens", 16, int), temperature=_number(body, "temperature", 1.0, float),
        top_p=_number(body, "top_p", 1.0, float), top_k=_number(body, "top_k", 0, int),
        seed=_number(body, "seed", None, int), stop=_stop(body), ttft_ms=_number(body, "ttft_ms", None, float),
        tpot_ms=_number(body, "tpot_ms", None, float), priority=_number(body, "priority", 0, int), **fields,
    )  # fmt: skip
    try:
        request.validate()
    except ProtocolError as err:
        raise ApiError(400, err.reason, param=err.field, code="invalid_value") from err
    return request


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(part["text"] for part in content if part.get("type") == "text")
    raise TypeError("content")


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


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
            gen = build_request(body, chat=chat)
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
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text},
                      "finish_reason": _finish(result.finish_reason), "logprobs": None}  # fmt: skip
        else:
            choice = {"index": 0, "text": result.text, "finish_reason": _finish(result.finish_reason), "logprobs": None}
        return JSONResponse(_envelope(gen, result.model_id, chat, stream=False) | {"choices": [choice], "usage": usage})

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
        try:
            if chat:
                yield _sse(head | {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            delta = first
            while delta is not None:
                part = {"content": delta.text} if chat else None
                choice = {"index": 0, "delta": part} if chat else {"index": 0, "text": delta.text}
                yield _sse(head | {"choices": [choice | {"finish_reason": None}]})
                delta = await anext(events, None)
        except (NoPeerAvailable, GenerationRefused) as err:
            yield _sse({"error": {"message": str(err), "type": "server_error", "param": None, "code": None}})
            return
        finally:
            await events.aclose()
        done = progress.done
        reason = _finish(done.finish_reason) if done else "stop"
        last = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        yield _sse(head | {"choices": [last | {"finish_reason": reason}]})
        if include_usage and done is not None:
            usage = {"prompt_tokens": done.usage.prompt_tokens, "completion_tokens": len(progress.token_ids)}
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
