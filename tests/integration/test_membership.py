"""Real `swarm join` processes on 127.0.0.1: convergence, expiry after kill -9, private swarms, clean exit."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from comms.pnet import generate_swarm_key
from tests.integration.nodes import wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.timeout(120)]

FAST = ("--heartbeat-s", "0.5", "--peer-timeout-s", "3")


def test_chain_bootstrap_converges_and_kill9_is_dropped(start_node) -> None:
    a = start_node("a", *FAST)
    b = start_node("b", *FAST, "--peer", a.addr)
    c = start_node("c", *FAST, "--peer", b.addr)  # c is never told about a
    nodes = [a, b, c]
    everyone = {a.peer_id, b.peer_id, c.peer_id}

    wait_until(lambda: all(n.peer_ids() == everyone for n in nodes), timeout_s=15)
    for n in nodes:
        rows = n.peers()
        assert len(rows) == 3
        assert [r["peer_id"] for r in rows if r["self"]] == [n.peer_id]
        for row in rows:
            assert {"peer_id", "addrs", "roles", "version", "age_s", "self"} <= set(row)

    c.signal(signal.SIGKILL)
    # How soon a silent peer expires is the membership table's logic (tests/unit/swarm/test_membership.py, fake
    # clock); here only that it does, on a deadline generous enough for a busy machine.
    wait_until(lambda: all(n.peer_ids() == {a.peer_id, b.peer_id} for n in (a, b)), timeout_s=30, interval_s=0.1)
    assert c.proc.wait(timeout=30) == -signal.SIGKILL


def test_node_with_another_swarm_key_never_appears(start_node, tmp_path: Path) -> None:
    key1, key2 = tmp_path / "one.key", tmp_path / "two.key"
    key1.write_text(generate_swarm_key())
    key2.write_text(generate_swarm_key())
    a = start_node("a", *FAST, "--swarm-key", str(key1))
    b = start_node("b", *FAST, "--swarm-key", str(key1), "--peer", a.addr)
    outsider = start_node("x", *FAST, "--swarm-key", str(key2), "--peer", a.addr, "--peer", b.addr)
    wait_until(lambda: a.peer_ids() == b.peer_ids() == {a.peer_id, b.peer_id}, timeout_s=15)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert outsider.peer_id not in a.peer_ids() | b.peer_ids()
        assert outsider.peer_ids() == {outsider.peer_id}
        time.sleep(0.5)


def test_sigterm_exits_zero_and_releases_ports(start_node) -> None:
    a = start_node("a", *FAST)
    b = start_node("b", *FAST, "--peer", a.addr)
    wait_until(lambda: len(a.peers()) == 2, timeout_s=15)
    port = int(a.addr.split("/tcp/")[1].split("/")[0])
    http_port = int(a.http.rsplit(":", 1)[1])
    a.signal(signal.SIGTERM)
    assert a.proc.wait(timeout=30) == 0
    for p in (port, http_port):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))  # raises if the port were still held
    b.signal(signal.SIGINT)
    assert b.proc.wait(timeout=30) == 0
