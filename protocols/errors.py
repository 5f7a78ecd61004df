"""Typed refusals and the root of every exception the project raises.

This module knows nothing about sockets, peers or models: it names what can go wrong on the wire so that every
layer above refuses with a code instead of a bare string or a crash.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Why a peer's message or request was refused. Values are part of the wire protocol: never renumber."""

    BAD_REQUEST = 1  # well-formed message with an invalid value (empty prompt, NaN temperature, ...)
    OVERLOADED = 2  # cannot meet the request's SLO now; retry_after_ms says when to try again
    UNSUPPORTED_VERSION = 3  # protocol major version not spoken by this node
    MODEL_MISMATCH = 4  # model id or hash differs from what this node serves or trains
    TOO_LARGE = 5  # frame, string, binary or array over its limit
    INTERNAL = 6  # the node failed; the request may be retried elsewhere
    MALFORMED = 7  # bytes that do not decode: garbage, truncated frame, wrong MessagePack types
    UNKNOWN_TYPE = 8  # a message type tag this node does not know
    TIMEOUT = 9  # a deadline passed
    CANCELLED = 10  # the request was cancelled by its sender or by shutdown
    NOT_FOUND = 11  # the named thing (model, request, peer) is not here


def error_code_of(code: int) -> ErrorCode:
    """The ErrorCode of a wire value; codes this version does not know read as INTERNAL."""
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.INTERNAL


class SwarmError(Exception):
    """Root of every exception raised by the project."""


class ProtocolError(SwarmError):
    """A message from the network was refused. ``field`` names the offending field when there is one."""

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.field = field
        self.reason = message
        prefix = f"{self.code.name}"
        if field:
            prefix += f" ({field})"
        super().__init__(f"{prefix}: {message}")


def describe_error(err: BaseException) -> str:
    """One line for an error, exception groups flattened to their distinct leaves: ``Type: message; ...``."""
    leaves: list[str] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
            return
        text = " ".join(str(e).split())
        # The project's own errors say what failed in their message; others need their type to make sense.
        leaves.append(text if isinstance(e, SwarmError) and text else f"{type(e).__name__}: {text}".rstrip(": "))

    walk(err)
    return "; ".join(dict.fromkeys(leaves))
