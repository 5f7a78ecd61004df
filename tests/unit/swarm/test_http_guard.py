"""The HTTP guard on its own: keys, open paths, the body limit (never reading a large body whole) and counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from swarm.web.http_guard import HttpGuard, read_api_keys

KEYS = ["sk-first", "sk-second"]
LIMIT = 1000
CHUNK = 100


class _App:
    """An ASGI app that reads the whole body and answers 200 with its length."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


class _Body:
    """A request body of ``total`` bytes offered in CHUNK-byte messages; counts the messages taken."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.taken = 0

    async def __call__(self) -> dict[str, Any]:
        sent = self.taken * CHUNK
        self.taken += 1
        size = min(CHUNK, self.total - sent)
        return {"type": "http.request", "body": b"x" * size, "more_body": sent + size < self.total}


def _scope(path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "path": path, "method": "POST",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip


def _call(guard: HttpGuard, path: str, headers: dict[str, str], body: _Body) -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    trio.run(guard, _scope(path, headers), body, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _guard(keys: list[str] = KEYS) -> tuple[HttpGuard, _App]:
    app = _App()
    return HttpGuard(app, api_keys=keys, open_paths=["/healthz"], max_body_bytes=LIMIT), app


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer sk-wrong", 401), ("Basic sk-first", 401), ("Bearer sk-first", 200),
     ("bearer sk-second", 200), ("Bearer  sk-second ", 200), ("Bearer sk-firs", 401), ("Bearer ", 401)],
)  # fmt: skip
def test_keys_decide_on_guarded_paths(header: str | None, status: int) -> None:
    guard, app = _guard()
    headers = {"Authorization": header} if header is not None else {}
    got, body = _call(guard, "/v1/completions", headers, _Body(10))
    assert got == status
    assert len(app.bodies) == (status == 200)
    if status == 401:
        assert b'"code": "invalid_api_key"' in body and b'"type": "invalid_request_error"' in body
        assert guard.refused == {"401": 1}


def test_open_paths_and_keyless_guard_need_no_key() -> None:
    guard, _ = _guard()
    assert _call(guard, "/healthz", {}, _Body(0))[0] == 200
    keyless, _ = _guard(keys=[])
    assert _call(keyless, "/v1/completions", {}, _Body(10))[0] == 200
    assert guard.refused == {} and keyless.refused == {}


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    guard, app = _guard()
    body = _Body(10 * 2**20)
    status, text = _call(guard, "/v1/completions", {"Authorization": "Bearer sk-first",
                                                    "Content-Length": str(10 * 2**20)}, body)  # fmt: skip
    assert status == 413 and b"request_too_large" in text
    assert body.taken == 0 and app.bodies == []
    assert guard.refused == {"413": 1}


def test_chunked_body_is_refused_at_the_limit_without_being_read_whole() -> None:
    guard, app = _guard()
    body = _Body(10 * 2**20)  # 10 MiB offered, no Content-Length
    status, _ = _call(guard, "/v1/completions", {"Authorization": "Bearer sk-first"}, body)
    assert status == 413
    # Stopped one chunk past the limit: 11 of the 104858 chunks offered were read.
    assert body.taken == LIMIT // CHUNK + 1
    assert app.bodies == []


def test_body_at_the_limit_reaches_the_app_whole() -> None:
    guard, app = _guard()
    status, text = _call(guard, "/v1/completions", {"Authorization": "Bearer sk-first"}, _Body(LIMIT))
    assert (status, text) == (200, str(LIMIT).encode())
    assert app.bodies == [b"x" * LIMIT]


def test_app_refusals_are_counted_by_status() -> None:
    async def not_found(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = HttpGuard(not_found, api_keys=[], open_paths=[], max_body_bytes=LIMIT)
    for _ in range(3):
        assert _call(guard, "/nope", {}, _Body(0))[0] == 404
    assert guard.refused == {"404": 3}


def test_key_file_lines_comments_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\n\nsk-one\n  sk-two  \n#sk-old\n")
    assert read_api_keys(path) == ["sk-one", "sk-two"]
    path.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="holds no key"):
        read_api_keys(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_api_keys(tmp_path / "missing")
