"""TCP byte counters of a process tree (the averager's p2pd counts come from these): kernel counts of the tree's
own sockets only, kept after sockets close, never going down."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from comms.tcp_counters import TcpByteCounter, TcpBytes, TcpCountersUnavailable

pytestmark = pytest.mark.timeout(60)


def _counter(pid: int) -> TcpByteCounter:
    try:
        return TcpByteCounter(pid)
    except TcpCountersUnavailable as err:
        pytest.skip(f"no per-socket TCP counters here: {err}")


def _poll_until(counter: TcpByteCounter, ok: Callable[[TcpBytes], bool], timeout_s: float = 30.0) -> TcpBytes:
    """Poll until `ok` (an ACK may be delayed a little after the data arrived)."""
    deadline = time.monotonic() + timeout_s
    totals = counter.poll()
    while not ok(totals) and time.monotonic() < deadline:
        time.sleep(0.02)
        totals = counter.poll()
    return totals


def _recv_exactly(conn: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = conn.recv(1 << 20)
        assert chunk, "peer closed early"
        got += len(chunk)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv
    srv.close()


def test_counts_this_process_sockets_and_keeps_closed_ones(server: socket.socket) -> None:
    counter = _counter(os.getpid())
    before = counter.poll()
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    client.sendall(b"x" * 300_000)
    _recv_exactly(conn, 300_000)
    conn.sendall(b"y" * 5_000)
    _recv_exactly(client, 5_000)
    open_totals = _poll_until(counter, lambda t: t.sent - before.sent >= 305_000)
    # both ends are ours: each byte is counted once as sent (acknowledged) and once as received
    assert open_totals.sent - before.sent >= 305_000
    assert open_totals.received - before.received == 305_000
    assert open_totals.sent - before.sent < 305_000 + 100  # + SYN/FIN sequence numbers, nothing else
    client.close()
    conn.close()
    closed = counter.poll()
    assert closed.sent >= open_totals.sent and closed.received >= open_totals.received

    again = socket.create_connection(server.getsockname())
    conn2, _ = server.accept()
    again.sendall(b"z" * 1_000)
    _recv_exactly(conn2, 1_000)
    later = counter.poll()
    assert later.received - closed.received == 1_000
    again.close()
    conn2.close()


CHILD = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"c" * 200_000)
seen = b""
while not seen.endswith(b"k"):  # the parent has read everything and polled
    chunk = s.recv(65536)
    assert chunk
    seen += chunk
s.close()
"""


def test_counts_only_the_given_process_tree(server: socket.socket) -> None:
    port = server.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port)])
    try:
        counter = _counter(child.pid)
        conn, _ = server.accept()
        conn.sendall(b"p" * 7_000)
        _recv_exactly(conn, 200_000)
        totals = _poll_until(counter, lambda t: t.sent >= 200_000 and t.received >= 7_000)
        assert totals.sent >= 200_000 and totals.sent < 200_000 + 100  # the child's sends, not ours
        assert totals.received == 7_000  # what the child's socket took in, not what this process received
        conn.sendall(b"k")
        assert child.wait(timeout=60) == 0
        conn.close()
        assert counter.poll().sent >= totals.sent  # the child exited; its bytes stay counted
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
