"""Bytes a process tree moved through its TCP sockets, as the Linux kernel counts them.

`TcpByteCounter(root_pid)` finds the TCP sockets held by a process and all its descendants (for the averager:
its child interpreter and hivemind's p2pd daemon), asks the kernel for their `tcp_info` over a sock_diag netlink
socket and sums `tcpi_bytes_acked` (sent and acknowledged by the remote end) and `tcpi_bytes_received`. Sockets
are tracked by their kernel cookie, so a closed socket's bytes stay counted (as of the last poll, or later while
it lingers orphaned in FIN_WAIT) and totals never go down. Knows nothing about hivemind or training.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO = 2
TCP_TIME_WAIT, TCP_LISTEN, TCP_NEW_SYN_RECV = 6, 10, 12
# states that can have moved bytes and report tcp_info (a dump is host-wide: skip listeners and time-wait)
DATA_STATES = 0xFFFFFFFF & ~((1 << TCP_TIME_WAIT) | (1 << TCP_LISTEN) | (1 << TCP_NEW_SYN_RECV))

_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_DIAG_REQ = struct.Struct("=BBBxI48x")  # family, protocol, extensions, pad, states, inet_diag_sockid (any)
_DIAG_MSG_LEN = 72  # struct inet_diag_msg
_COOKIE = struct.Struct("=Q")  # id.idiag_cookie at offset 44 of inet_diag_msg
_INODE = struct.Struct("=I")  # idiag_inode at offset 68
_RTATTR = struct.Struct("=HH")
# struct tcp_info: tcpi_bytes_acked, tcpi_bytes_received (both __u64) at offsets 120 and 128 (Linux >= 4.1)
_TCP_BYTES = struct.Struct("=QQ")
_TCP_BYTES_OFFSET = 120


class TcpCountersUnavailable(OSError):
    """This system cannot report per-socket TCP byte counts (not Linux, or sock_diag is refused)."""


@dataclass(frozen=True)
class TcpBytes:
    sent: int  # acknowledged by the remote ends
    received: int
    sockets: int  # sockets counted so far, open or closed


@dataclass
class _Seen:
    sent: int
    received: int


def _align4(n: int) -> int:
    return (n + 3) & ~3


def tcp_socket_bytes(family: int) -> dict[int, tuple[int, int, int]]:
    """cookie -> (inode, bytes_acked, bytes_received) for every TCP socket of `family` in this network namespace
    that can carry data (not listening, not in TIME_WAIT, which reports no tcp_info)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(5.0)
        req = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), DATA_STATES)
        nl.send(
            _NLMSG_HDR.pack(_NLMSG_HDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
        )
        out: dict[int, tuple[int, int, int]] = {}
        while True:
            data = nl.recv(1 << 20)
            offset = 0
            while offset + _NLMSG_HDR.size <= len(data):
                length, kind = _NLMSG_HDR.unpack_from(data, offset)[:2]
                if length < _NLMSG_HDR.size:
                    raise TcpCountersUnavailable("malformed sock_diag reply")
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)
                    raise TcpCountersUnavailable(-errno, f"sock_diag refused the dump: {os.strerror(-errno)}")
                if kind == SOCK_DIAG_BY_FAMILY:
                    _parse_diag_msg(data, offset + _NLMSG_HDR.size, offset + length, out)
                offset += _align4(length)


def _parse_diag_msg(data: bytes, start: int, end: int, out: dict[int, tuple[int, int, int]]) -> None:
    if end - start < _DIAG_MSG_LEN:
        return
    (cookie,) = _COOKIE.unpack_from(data, start + 44)
    (inode,) = _INODE.unpack_from(data, start + 68)
    attr = start + _DIAG_MSG_LEN
    while attr + _RTATTR.size <= end:
        alen, atype = _RTATTR.unpack_from(data, attr)
        if alen < _RTATTR.size:
            return
        if atype == INET_DIAG_INFO and alen - _RTATTR.size >= _TCP_BYTES_OFFSET + _TCP_BYTES.size:
            acked, received = _TCP_BYTES.unpack_from(data, attr + _RTATTR.size + _TCP_BYTES_OFFSET)
            out[cookie] = (inode, acked, received)
            return
        attr += _align4(alen)


def process_tree(root_pid: int) -> list[int]:
    """`root_pid` and its living descendants (from /proc/<pid>/task/<tid>/children)."""
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except (OSError, ValueError):
                continue
    return tree


def socket_inodes(pids: list[int]) -> set[int]:
    """Inodes of the sockets these processes hold open."""
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


class TcpByteCounter:
    """Monotonic TCP byte totals of one process tree. `poll()` is thread-safe; call it often (a closed socket
    keeps the bytes seen at the last poll that found it)."""

    def __init__(self, root_pid: int) -> None:
        if not sys.platform.startswith("linux"):
            raise TcpCountersUnavailable(f"TCP byte counters need Linux sock_diag, not {sys.platform}")
        tcp_socket_bytes(socket.AF_INET)  # fail now, not at the first poll, where sock_diag is refused
        self.root_pid = root_pid
        self._lock = threading.Lock()
        self._live: dict[int, _Seen] = {}  # by socket cookie
        self._closed_sent = 0
        self._closed_received = 0
        self._closed_count = 0

    def poll(self) -> TcpBytes:
        with self._lock:
            ours = socket_inodes(process_tree(self.root_pid))
            found: dict[int, tuple[int, int, int]] = {}
            for family in (socket.AF_INET, socket.AF_INET6):
                found.update(tcp_socket_bytes(family))
            for cookie, (inode, sent, received) in found.items():
                seen = self._live.get(cookie)
                if seen is not None:  # ours, possibly orphaned by now (inode 0 once closed)
                    seen.sent, seen.received = max(seen.sent, sent), max(seen.received, received)
                elif inode in ours:
                    self._live[cookie] = _Seen(sent, received)
            for cookie in [c for c in self._live if c not in found]:
                gone = self._live.pop(cookie)
                self._closed_sent += gone.sent
                self._closed_received += gone.received
                self._closed_count += 1
            return self._totals()

    def totals(self) -> TcpBytes:
        """The totals as of the last poll."""
        with self._lock:
            return self._totals()

    def _totals(self) -> TcpBytes:
        return TcpBytes(
            sent=self._closed_sent + sum(s.sent for s in self._live.values()),
            received=self._closed_received + sum(s.received for s in self._live.values()),
            sockets=self._closed_count + len(self._live),
        )
