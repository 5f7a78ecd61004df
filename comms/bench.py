"""`swarm bench comms`: bulk transfer over a libp2p stream (noise + yamux) against a raw TCP socket on loopback,
in the same run and process, interleaved; and gossip propagation latency across N hosts.

Both transfers run on one trio loop with both ends in this process, so the ratio compares the stacks, not the
machines. Knows hosts and sockets; prints nothing (the CLI renders the result).
"""

from __future__ import annotations

import os
import statistics
import struct
import time
from collections.abc import Callable
from typing import Any

import trio

from comms.config import NetworkConfig
from comms.host import P2PHost
from comms.identity import generate_identity
from protocols.limits import STREAM_LIMITS

BULK_PROTOCOL = "/swarm/bench-bulk/1.0.0"
CHUNK_BYTES = 64 * 1024
GOSSIP_PROGRESS_EVERY = 10  # messages between two progress reports
Progress = Callable[[str], None]  # called with a message as each step begins


def _local_host() -> P2PHost:
    return P2PHost(NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"]), generate_identity())


async def _libp2p_transfer(sender: P2PHost, receiver: P2PHost, total_bytes: int) -> float:
    """Seconds to push ``total_bytes`` through one libp2p stream and get the receiver's acknowledgement."""
    stream = await sender.open_stream(receiver.peer_id, BULK_PROTOCOL, STREAM_LIMITS)
    chunk = os.urandom(CHUNK_BYTES)
    started = time.perf_counter()
    await stream.stream.write(struct.pack(">Q", total_bytes))
    sent = 0
    while sent < total_bytes:
        piece = chunk[: min(CHUNK_BYTES, total_bytes - sent)]
        await stream.stream.write(piece)
        sent += len(piece)
    ack = await stream.stream.read(1)
    elapsed = time.perf_counter() - started
    if ack != b"\x01":
        raise RuntimeError("receiver did not acknowledge the transfer")
    await stream.close()
    return elapsed


async def _drain_libp2p(raw_stream: Any) -> None:
    header = b""
    while len(header) < 8:
        header += await raw_stream.read(8 - len(header))
    (remaining,) = struct.unpack(">Q", header)
    while remaining > 0:
        data = await raw_stream.read(min(remaining, CHUNK_BYTES))
        if not data:
            raise RuntimeError("stream ended early")
        remaining -= len(data)
    await raw_stream.write(b"\x01")


async def _tcp_transfer(total_bytes: int) -> float:
    """Seconds to push ``total_bytes`` over a plain loopback TCP connection (same process, same loop)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    chunk = os.urandom(CHUNK_BYTES)

    async def _receive(stream: trio.SocketStream) -> None:
        remaining = total_bytes
        while remaining > 0:
            data = await stream.receive_some(min(remaining, CHUNK_BYTES))
            if not data:
                raise RuntimeError("tcp stream ended early")
            remaining -= len(data)
        await stream.send_all(b"\x01")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _receive, listeners)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        started = time.perf_counter()
        sent = 0
        while sent < total_bytes:
            piece = chunk[: min(CHUNK_BYTES, total_bytes - sent)]
            await client.send_all(piece)
            sent += len(piece)
        await client.receive_some(1)
        elapsed = time.perf_counter() - started
        await client.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


async def _bulk(total_bytes: int, repeats: int, progress: Progress) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        sender, receiver = _local_host(), _local_host()
        await nursery.start(sender.run)
        await nursery.start(receiver.run)
        receiver._host.set_stream_handler(BULK_PROTOCOL, _drain_libp2p)  # raw bytes, no message framing
        await sender.connect(receiver.dialable_addrs()[0])
        libp2p_s, tcp_s = [], []
        for i in range(repeats):  # interleaved A B A B on the same machine state
            progress(f"bulk transfer {i + 1}/{repeats}: libp2p")
            libp2p_s.append(await _libp2p_transfer(sender, receiver, total_bytes))
            progress(f"bulk transfer {i + 1}/{repeats}: tcp")
            tcp_s.append(await _tcp_transfer(total_bytes))
        nursery.cancel_scope.cancel()
    mib = total_bytes / 2**20
    return {
        "bytes": total_bytes,
        "repeats": repeats,
        "libp2p_mib_s": mib / statistics.median(libp2p_s),
        "tcp_mib_s": mib / statistics.median(tcp_s),
        "libp2p_seconds": libp2p_s,
        "tcp_seconds": tcp_s,
    }


async def _gossip(num_peers: int, messages: int, progress: Progress) -> dict[str, Any]:
    topic = "swarm/bench/gossip"
    latencies: list[float] = []
    received = 0
    async with trio.open_nursery() as nursery:
        hosts = [_local_host() for _ in range(num_peers)]
        for host in hosts:
            await nursery.start(host.run)
        for i, host in enumerate(hosts[1:], start=1):  # a chain: every message must be relayed
            await host.connect(hosts[i - 1].dialable_addrs()[0])

        async def _listen(host: P2PHost) -> None:
            nonlocal received
            async with host.subscribe(topic) as channel:
                async for origin, data in channel:
                    if origin != host.peer_id:
                        latencies.append(time.perf_counter() - struct.unpack(">d", data[:8])[0])
                        received += 1

        for host in hosts:
            nursery.start_soon(_listen, host)
        progress("gossip: waiting for the mesh")
        await trio.sleep(3.0)
        for m in range(messages):
            publisher = hosts[m % num_peers]
            await publisher.publish(topic, struct.pack(">d", time.perf_counter()) + os.urandom(120))
            if m % GOSSIP_PROGRESS_EVERY == 0:
                progress(f"gossip: message {m + 1}/{messages}")
            await trio.sleep(0.02)
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    expected = messages * (num_peers - 1)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "num_peers": num_peers,
        "messages": messages,
        "delivered_fraction": received / expected,
        "p50_ms": _percentile(ms, 50),
        "p99_ms": _percentile(ms, 99),
        "max_ms": ms[-1] if ms else None,
    }


def _percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(pct / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def bench_config(quick: bool, num_peers: int) -> dict[str, Any]:
    return {
        "bulk_bytes": (16 if quick else 64) * 2**20,
        "bulk_repeats": 3 if quick else 5,
        "gossip_peers": num_peers,
        "gossip_messages": 40 if quick else 200,
        "chunk_bytes": CHUNK_BYTES,
    }


def progress_steps(quick: bool, num_peers: int = 5) -> int:
    """How many times `run_comms_bench` reports progress: two per bulk repeat, the mesh wait, the gossip reports."""
    config = bench_config(quick, num_peers)
    return 2 * config["bulk_repeats"] + 1 + -(-config["gossip_messages"] // GOSSIP_PROGRESS_EVERY)


def run_comms_bench(*, quick: bool, num_peers: int = 5, progress: Progress | None = None) -> dict[str, Any]:
    """Run both parts; returns the bench JSON object (without the machine description)."""
    progress = progress or (lambda _msg: None)
    config = bench_config(quick, num_peers)

    async def _main() -> dict[str, Any]:
        bulk = await _bulk(config["bulk_bytes"], config["bulk_repeats"], progress)
        gossip = await _gossip(num_peers, config["gossip_messages"], progress)
        return {"bulk": bulk, "gossip": gossip}

    results = trio.run(_main)
    return {
        "bench": "comms",
        "config": config,
        "results": results,
        "ratios": {"libp2p_vs_tcp_throughput": results["bulk"]["libp2p_mib_s"] / results["bulk"]["tcp_mib_s"]},
    }
