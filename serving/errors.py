"""Serving's refusals: the typed errors a caller of the engine sees, rooted in `protocols.errors`.

This module knows only how to name a refusal; deciding when to refuse is the scheduler's policies' job.
"""

from __future__ import annotations

from protocols.errors import ErrorCode, ProtocolError, SwarmError


class OverloadedError(ProtocolError):
    """The request cannot meet its SLO here now; `retry_after_ms` says when trying again may succeed."""

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(ErrorCode.OVERLOADED, message)
        self.retry_after_ms = max(1, int(retry_after_ms))


class EngineError(SwarmError):
    """The engine is not in a state to do what was asked (not started, stopped)."""
