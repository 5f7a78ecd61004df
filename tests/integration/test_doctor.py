"""`swarm doctor` as a user runs it: against a bootstrap address nobody answers (named, exit 1), against a live
node (every check OK, the averaging stack included), and against a private swarm with another key (the
handshake and the key are named as the failure)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.multipeer, pytest.mark.timeout(180)]

PEER = "12D3KooWD49UDAZMZq8aXpB9zfjCV6t1szvenRf4SWJrdgy4WAgq"


def _doctor(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "swarm", "doctor", "--listen", "/ip4/127.0.0.1/tcp/0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=_wide_terminal())


def _wide_terminal() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "400"}  # one finding per line, however narrow the test's terminal


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def test_unanswering_bootstrap_is_named_and_fails() -> None:
    addr = f"/ip4/127.0.0.1/tcp/{_closed_port()}/p2p/{PEER}"
    out = _doctor("--peer", addr, "--no-averaging")
    assert out.returncode == 1, out.stdout + out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("FAIL"))
    assert addr in line and "does not answer over TCP" in line
    assert "fix: check that the peer runs" in out.stdout
    assert out.stdout.count("FAIL") == 1 and "OK   listen" in out.stdout


@pytest.mark.slow
def test_live_node_passes_every_check(start_node) -> None:
    node = start_node("a", "--heartbeat-s", "0.5")
    out = _doctor("--peer", node.addr)
    assert out.returncode == 0, out.stdout + out.stderr
    for check in ("listen", f"bootstrap {node.addr}", "swarm key", "clock", "averaging"):
        assert f"OK   {check}:" in out.stdout, out.stdout
    assert "speaks our protocol" in out.stdout and "every check passed" in out.stdout


@pytest.mark.slow
def test_other_swarm_key_fails_the_handshake(start_node, tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.key", tmp_path / "theirs.key"
    for key in (ours, theirs):
        subprocess.run([sys.executable, "-m", "swarm", "swarm-key", str(key)], check=True, capture_output=True)
    node = start_node("keyed", "--swarm-key", str(theirs))
    out = _doctor("--peer", node.addr, "--swarm-key", str(ours), "--no-averaging")
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"FAIL bootstrap {node.addr}: TCP answers but the libp2p handshake fails" in out.stdout
    assert "FAIL swarm key: this node is in a private swarm" in out.stdout
    same = _doctor("--peer", node.addr, "--swarm-key", str(theirs), "--no-averaging")
    assert same.returncode == 0, same.stdout
