"""The HTTP API's gate: bearer API keys, the request body limit, and counts of what it refused.

A plain ASGI middleware in front of the app, so a refusal is answered before the app (or any JSON parser) sees
the request, and a body past the limit is never read whole: a Content-Length over the limit is refused before
one byte of body is read, and a chunked body is counted as it arrives and refused the moment it passes the
limit. It knows keys, paths, sizes and statuses; nothing about generation or the node.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def read_api_keys(path: Path) -> list[str]:
    """Keys of an API key file: one a line; blank lines and lines starting with `#` are ignored.

    Raises ValueError (with what is wrong) when the file cannot be read or holds no key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read API key file {str(path)!r}: {getattr(err, 'strerror', None) or err}") from err
    keys = [line.strip() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ValueError(f"API key file {str(path)!r} holds no key (one key a line; # starts a comment)")
    return keys


def _error_body(message: str, kind: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


class _BodyTooLarge(Exception):
    pass


class HttpGuard:
    """Wraps ``app``: refuses requests without a valid key (unless their path is open) with 401, and bodies over
    ``max_body_bytes`` with 413; counts every 4xx answer, by status, in ``refused``."""

    def __init__(
        self,
        app: App,
        *,
        api_keys: Iterable[str],
        open_paths: Iterable[str],
        max_body_bytes: int,
        refused: Counter[str] | None = None,
    ) -> None:
        self.app = app
        self._keys = [k.encode() for k in api_keys]
        self.open_paths = frozenset(open_paths)
        self.max_body_bytes = max_body_bytes
        self.refused: Counter[str] = Counter() if refused is None else refused

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        if not self._keys:
            return True
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        # Every key is compared in constant time, and all of them, so timing tells neither the key nor its line.
        return sum(hmac.compare_digest(token, key) for key in self._keys) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if scope["path"] not in self.open_paths and not self.authorized(headers):
            await self._refuse(send, 401, "a valid API key is required (Authorization: Bearer <key>)",
                               "invalid_request_error", "invalid_api_key")  # fmt: skip
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._refuse(send, 413, f"request body over {self.max_body_bytes} bytes", "invalid_request_error",
                               "request_too_large")  # fmt: skip
            return
        try:
            body = await self._read_body(receive)
        except _BodyTooLarge:
            await self._refuse(send, 413, f"request body over {self.max_body_bytes} bytes", "invalid_request_error",
                               "request_too_large")  # fmt: skip
            return
        await self.app(scope, self._replay(body, receive), self._counting(send))

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, read chunk by chunk and never past the limit; None if the client went away."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def _replay(body: bytes | None, receive: Receive) -> Receive:
        """The app's receive: the body read already, then the real channel (for disconnects while streaming)."""
        pending = [{"type": "http.disconnect"} if body is None else {"type": "http.request", "body": body}]

        async def _receive() -> Message:
            if pending:
                return pending.pop()
            return await receive()

        return _receive

    def _counting(self, send: Send) -> Send:
        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self.refused[str(message["status"])] += 1
            await send(message)

        return _send

    async def _refuse(self, send: Send, status: int, message: str, kind: str, code: str) -> None:
        self.refused[str(status)] += 1
        body = _error_body(message, kind, code)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        # The body, if any, is left unread: the connection cannot carry another request.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
