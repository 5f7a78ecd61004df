"""The soak bench's hostile peer: a plain libp2p host (no swarm node behind it) that dials nodes and writes random
bytes on every protocol they may speak, ours and the library's (gossip, identify, ping), then closes the stream.

It counts what happened to each write; it knows nothing about what the nodes do with the bytes.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable

import trio

from comms.config import NetworkConfig
from comms.errors import CommsError
from comms.host import GOSSIPSUB_PROTOCOLS, P2PHost
from comms.identity import generate_identity
from protocols import STREAM_LIMITS
from protocols.ids import GENERATE_PROTOCOL, PEERS_PROTOCOL, TENSOR_PROTOCOL

# Gossip first: a malformed RPC there reaches the library's own reader, not one of our handlers.
DEFAULT_GARBAGE_PROTOCOLS = (
    *GOSSIPSUB_PROTOCOLS,
    PEERS_PROTOCOL,
    GENERATE_PROTOCOL,
    TENSOR_PROTOCOL,
    "/ipfs/id/1.0.0",
    "/ipfs/id/push/1.0.0",
    "/ipfs/ping/1.0.0",
)
WRITE_DEADLINE_S = 5.0


class GarbageWriter:
    """Every `interval_s`, for each node `targets()` lists as up, writes `nbytes` random bytes on each protocol.

    `counts`: "written" (streams that took the bytes), "not_spoken" (the node refused the protocol),
    "dial_failed" (the node could not be reached),
    "reset" (the node closed the stream or connection while we wrote), "timeout"."""

    def __init__(
        self,
        targets: Callable[[], list[tuple[str, str]]],
        protocols: tuple[str, ...] = DEFAULT_GARBAGE_PROTOCOLS,
        nbytes: int = 1 << 18,
        interval_s: float = 2.0,
        seed: int = 0,
    ) -> None:
        self.targets = targets
        self.protocols = tuple(protocols)
        self.nbytes = nbytes
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.bytes_written = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        config = NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"], dial_timeout_s=WRITE_DEADLINE_S)
        host = P2PHost(config, generate_identity())
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            task_status.started()
            while True:
                for addr, peer_id in self.targets():
                    await self._hit(host, addr, peer_id)
                await trio.sleep(self.interval_s)

    async def _hit(self, host: P2PHost, addr: str, peer_id: str) -> None:
        if peer_id not in host.connected_peers():
            try:
                await host.connect(addr)
            except CommsError:
                self.counts["dial_failed"] += 1
                return
        for protocol in self.protocols:
            self.counts[await self._write(host, peer_id, protocol)] += 1

    async def _write(self, host: P2PHost, peer_id: str, protocol: str) -> str:
        try:
            stream = await host.open_stream(peer_id, protocol, STREAM_LIMITS)
        except CommsError:
            return "not_spoken"
        payload = self.rng.randbytes(self.nbytes) if self.nbytes < 1 << 16 else os.urandom(self.nbytes)
        outcome = "written"
        with trio.move_on_after(WRITE_DEADLINE_S) as scope:
            try:
                await stream.stream.write(payload)
                self.bytes_written += len(payload)
            except Exception:  # whatever the library raises for a stream the node reset: that is the point
                outcome = "reset"
        if scope.cancelled_caught:
            outcome = "timeout"
        await stream.reset()  # no reply is awaited: the node's answer to garbage is its own business
        return outcome
