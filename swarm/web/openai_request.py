"""OpenAI request bodies (`/v1/completions`, `/v1/chat/completions`) turned into GenerateRequests.

What clients send is accepted as vLLM accepts it: fields we honour are mapped, fields whose value changes nothing
(`tools: []`, `response_format: {"type": "text"}`, `logit_bias: {}`...) and fields we do not know are ignored
(logged at debug), and a field we cannot honour with the value given is a 400 naming it. Knows the OpenAI body
shapes and the generate protocol; nothing about routing or engines.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse

from protocols import ChatMessage, GenerateRequest, ProtocolError
from serving.request import MAX_REPETITION_PENALTY, MAX_TOP_LOGPROBS, PENALTY_LIMIT

log = logging.getLogger(__name__)

# Fields we honour (besides model, prompt / messages), swarm extensions included.
HONOURED = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream",
            "stream_options", "n", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
            "repetition_penalty", "ignore_eos", "ttft_ms", "tpot_ms", "priority"}  # fmt: skip
# Fields that only describe the caller or the transport: ignored whatever their value.
INFORMATIONAL = {"user", "metadata", "store", "service_tier", "request_id", "stream_options"}


def _neutral(*values: Any) -> Callable[[Any], bool]:
    """A test that a value is null or equal to one of ``values``, with bools never equal to numbers."""

    def test(value: Any) -> bool:
        if value is None:
            return True
        for v in values:
            if isinstance(v, bool) or isinstance(value, bool):
                if value is v:
                    return True
            elif isinstance(v, int | float) and isinstance(value, int | float):
                if value == v:
                    return True
            elif type(value) is type(v) and value == v:
                return True
        return False

    return test


# Fields accepted when their value changes nothing; any other value is a 400 naming the field.
NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "tools": _neutral([]),
    "tool_choice": _neutral("none", "auto"),
    "parallel_tool_calls": _neutral(True, False),
    "functions": _neutral([]),
    "function_call": _neutral("none", "auto"),
    "response_format": _neutral({"type": "text"}),
    "logit_bias": _neutral({}),
    "echo": _neutral(False),
    "suffix": _neutral(""),
    "best_of": _neutral(1),
    "min_tokens": _neutral(0),
    "min_p": _neutral(0.0),
    "skip_special_tokens": _neutral(True),
    "spaces_between_special_tokens": _neutral(True),
    "include_stop_str_in_output": _neutral(False),
    "modalities": _neutral(["text"]),
    "audio": _neutral(),
    "prediction": _neutral(),
    "reasoning_effort": _neutral(),
    "add_generation_prompt": _neutral(True),
    "continue_final_message": _neutral(False),
}


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


def _invalid(name: str, message: str) -> ApiError:
    return ApiError(400, f"{name} {message}", param=name, code="invalid_value")


def _number(body: dict[str, Any], name: str, default: Any, kind: type) -> Any:
    """A finite float, or an int that fits the wire's 64 bits (priority is clamped afterwards, not refused)."""
    value = body.get(name, default)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) if kind is float else type(value) is int
    if not ok or (kind is float and not math.isfinite(value)):
        raise _invalid(name, f"must be a finite {kind.__name__}")
    if kind is int and name != "priority" and not -(2**63) <= value < 2**63:
        raise _invalid(name, "must fit in 64 bits")
    return kind(value)


def _ranged(body: dict[str, Any], name: str, default: float, low: float, high: float, *, open_low: bool) -> float:
    value = _number(body, name, default, float)
    if value < low or (open_low and value == low) or value > high:
        raise _invalid(name, f"must be in {'(' if open_low else '['}{low:g}, {high:g}]")
    return value


def _utf8(name: str, *texts: str) -> None:
    """JSON may carry lone surrogates ("\\ud800"), which no UTF-8 wire can: a 400, not a failure to send."""
    try:
        for text in texts:
            text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise _invalid(name, "must be valid Unicode text (no lone surrogates)") from err


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise _invalid("stop", "must be a string or a list of strings")
    _utf8("stop", *stop)
    return stop


def _check_fields(body: dict[str, Any], chat: bool) -> None:
    own = {"model", "messages"} if chat else {"model", "prompt"}
    for key, value in body.items():
        if key in own or key in HONOURED or key in INFORMATIONAL:
            continue
        test = NEUTRAL.get(key)
        if test is None:
            log.debug("ignoring unknown request field %r", key)
        elif not test(value):
            raise ApiError(400, f"{key} is not supported with a value other than its default", param=key,
                           code="unsupported_value")  # fmt: skip


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many top alternatives to report per token, or None for no log-probabilities."""
    if not chat:  # completions: logprobs is the number of alternatives
        value = _number(body, "logprobs", None, int)
        if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
            raise _invalid("logprobs", f"must be in 0..{MAX_TOP_LOGPROBS}")
        return value
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise _invalid("logprobs", "must be a boolean")
    top = _number(body, "top_logprobs", None, int)
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise _invalid("top_logprobs", f"must be in 0..{MAX_TOP_LOGPROBS}")
    if top and not wanted:
        raise _invalid("top_logprobs", "needs logprobs set to true")
    return (top or 0) if wanted else None


def _prompt_fields(body: dict[str, Any], chat: bool) -> dict[str, Any]:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid("messages", "must be a non-empty list")
        try:
            turns = [ChatMessage(str(m["role"]), _content(m["content"])) for m in messages]
        except (KeyError, TypeError, AttributeError) as err:
            raise ApiError(400, "each message needs a role and a text content", param="messages") from err
        _utf8("messages", *(t.role for t in turns), *(t.content for t in turns))
        return {"messages": turns}
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, list) and prompt and all(type(t) is int and t >= 0 for t in prompt):
        return {"prompt_token_ids": prompt}
    if not isinstance(prompt, str) or not prompt:
        raise _invalid("prompt", "must be a non-empty string (or one list of token ids)")
    _utf8("prompt", prompt)
    return {"prompt": prompt}


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [part["text"] for part in content if part.get("type") == "text"]
        if not all(isinstance(p, str) for p in parts):
            raise TypeError("content")
        return "".join(parts)
    raise TypeError("content")


def build_request(body: dict[str, Any], *, chat: bool, max_n: int = 16) -> GenerateRequest:
    """The GenerateRequest of an OpenAI body; ApiError(400) naming the field for anything we cannot honour."""
    _check_fields(body, chat)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required", param="model", code="missing_required_parameter")
    _utf8("model", model)
    fields = _prompt_fields(body, chat)
    n = _number(body, "n", 1, int)
    if not 1 <= n <= max_n:
        raise _invalid("n", f"must be in 1..{max_n}")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool | None):
        raise _invalid("ignore_eos", "must be a boolean")
    max_tokens = body.get("max_completion_tokens")
    max_tokens = body.get("max_tokens") if max_tokens is None else max_tokens
    max_tokens = (256 if chat else 16) if max_tokens is None else max_tokens
    request = GenerateRequest(
        request_id=uuid.uuid4().hex, model_id=model,
        max_new_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 16, int),
        temperature=_number(body, "temperature", 1.0, float), top_p=_number(body, "top_p", 1.0, float),
        top_k=_number(body, "top_k", 0, int), seed=_number(body, "seed", None, int), stop=_stop(body),
        ttft_ms=_number(body, "ttft_ms", None, float), tpot_ms=_number(body, "tpot_ms", None, float),
        priority=_number(body, "priority", 0, int), n=n, logprobs=_logprobs(body, chat),
        presence_penalty=_ranged(body, "presence_penalty", 0.0, -PENALTY_LIMIT, PENALTY_LIMIT, open_low=False),
        frequency_penalty=_ranged(body, "frequency_penalty", 0.0, -PENALTY_LIMIT, PENALTY_LIMIT, open_low=False),
        repetition_penalty=_ranged(body, "repetition_penalty", 1.0, 0.0, MAX_REPETITION_PENALTY, open_low=True),
        ignore_eos=bool(ignore_eos), **fields,
    )  # fmt: skip
    try:
        request.validate()
    except ProtocolError as err:
        raise ApiError(400, err.reason, param=err.field, code="invalid_value") from err
    return request
