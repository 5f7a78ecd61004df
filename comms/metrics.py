"""Counters of what crossed the network: messages and bytes in and out, refusals by error code, hostile streams
by protocol and peers dropped for them.

Plain integers updated from the node's event loop (and, for bytes, from the averaging thread): the HTTP layer
renders them in the Prometheus text format. Knows no sockets.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from protocols.errors import ErrorCode


@dataclass
class NetMetrics:
    """What this node sent, received and refused."""

    messages_in: Counter[str] = field(default_factory=Counter)  # by message kind / topic
    messages_out: Counter[str] = field(default_factory=Counter)
    bytes_in: Counter[str] = field(default_factory=Counter)  # by channel: "gossip", "stream", ...
    bytes_out: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)  # by ErrorCode name
    stream_errors: Counter[str] = field(default_factory=Counter)  # inbound streams ended as hostile, by protocol
    peers_dropped: Counter[str] = field(default_factory=Counter)  # peers disconnected and banned, by reason
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def received(self, kind: str, channel: str, nbytes: int) -> None:
        with self._lock:
            self.messages_in[kind] += 1
            self.bytes_in[channel] += nbytes

    def sent(self, kind: str, channel: str, nbytes: int) -> None:
        with self._lock:
            self.messages_out[kind] += 1
            self.bytes_out[channel] += nbytes

    def add_bytes(self, channel: str, nbytes_in: int = 0, nbytes_out: int = 0) -> None:
        with self._lock:
            self.bytes_in[channel] += nbytes_in
            self.bytes_out[channel] += nbytes_out

    def set_bytes(self, channel: str, total_in: int, total_out: int) -> None:
        """Set a channel's totals when another component counts them (the averaging process)."""
        with self._lock:
            self.bytes_in[channel] = total_in
            self.bytes_out[channel] = total_out

    def set_refused(self, label: str, total: int) -> None:
        """Set a refusal total counted by another component (tensor parts the averaging process refused)."""
        with self._lock:
            self.refused[label] = total

    def refuse(self, code: ErrorCode) -> None:
        with self._lock:
            self.refused[code.name] += 1

    def stream_error(self, protocol: str) -> None:
        with self._lock:
            self.stream_errors[protocol] += 1

    def refuse_banned(self) -> None:
        """A stream from a banned peer, refused before it was read."""
        with self._lock:
            self.stream_errors["banned_peer"] += 1

    def peer_dropped(self, reason: str) -> None:
        with self._lock:
            self.peers_dropped[reason] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                "messages_in": dict(self.messages_in),
                "messages_out": dict(self.messages_out),
                "bytes_in": dict(self.bytes_in),
                "bytes_out": dict(self.bytes_out),
                "refused": dict(self.refused),
                "stream_errors": dict(self.stream_errors),
                "peers_dropped": dict(self.peers_dropped),
            }
