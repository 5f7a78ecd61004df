"""`swarm join` start-up errors, run as a user would: one `error:` line naming the problem, a non-zero exit,
no traceback and no exception group dump."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(180)]

LISTEN = ("--listen", "/ip4/127.0.0.1/tcp/0")


def join(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "swarm", "join", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *names: str) -> None:
    assert result.returncode != 0, result.stderr
    for marker in ("Traceback", "ExceptionGroup", "Exception Group"):
        assert marker not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for name in names:
        assert name in errors[0], errors[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_missing_model_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = join(*LISTEN, "--roles", "serve", "--model", str(missing))
    assert_one_line_error(result, str(missing), "not a checkpoint directory")


def test_an_identity_file_that_is_not_a_key(tmp_path: Path) -> None:
    bad = tmp_path / "identity.key"
    bad.write_text("not a key\n")
    assert_one_line_error(join(*LISTEN, "--identity", str(bad)), str(bad))


def test_a_libp2p_port_in_use(busy_port: int) -> None:
    addr = f"/ip4/127.0.0.1/tcp/{busy_port}"
    assert_one_line_error(join("--listen", addr), addr, "cannot listen")


def test_an_http_port_in_use(busy_port: int) -> None:
    bind = f"127.0.0.1:{busy_port}"
    assert_one_line_error(join(*LISTEN, "--http", bind), f"cannot serve HTTP on {bind}", "Address already in use")
