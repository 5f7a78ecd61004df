"""A foreign peer (plain py-libp2p, none of our code) writes garbage on every protocol a serving node speaks, and
malformed gossipsub RPCs: the node keeps answering /healthz and generation, and /metrics counts the refusals."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx
import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from comms.stream_guard import StreamGuardConfig
from protocols.framing import encode_uvarint
from protocols.ids import GENERATE_PROTOCOL, PEERS_PROTOCOL
from tests.integration.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(180)]

# A short request deadline, so that a silent stream is ended (and counted) within the test.
SERVE = (
    "--roles",
    "serve",
    "--model",
    "tiny",
    "--set",
    "serving.dtype=float32",
    "--set",
    "network.request_timeout_s=1",
)
GOSSIP = ("/meshsub/1.1.0", "/meshsub/1.0.0")
GARBAGE_BYTES = 1024 * 1024
DRAIN_AFTER_CLOSE_S = 3.0


@asynccontextmanager
async def foreign_peer(node: NodeProcess) -> AsyncIterator[tuple[IHost, ID]]:
    """A bare py-libp2p host (noise, yamux) connected to ``node``; yields it and the node's peer id."""
    key_pair = create_new_key_pair()
    security = {NOISE_PROTOCOL_ID: NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)}
    host = new_host(key_pair=key_pair, sec_opt=security, muxer_preference="YAMUX")
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        info = info_from_p2p_addr(multiaddr.Multiaddr(node.addr))
        with trio.fail_after(10):
            await host.connect(info)
        yield host, info.peer_id


async def write_and_close(host: IHost, peer: ID, protocol: str, payload: bytes) -> None:
    """Open ``protocol``, write ``payload`` and close our side while draining whatever the node answers (ping
    echoes, so a writer that did not read would stall on flow control); return once the node's side ends. The
    node may refuse the stream at any point (reset half-way, or refuse to negotiate it): that is what is tested."""

    ended = trio.Event()

    async def drain(stream: INetStream) -> None:
        with suppress(Exception):
            while await stream.read(65536):
                pass
        ended.set()

    with trio.move_on_after(30), suppress(Exception):
        stream = await host.new_stream(peer, [protocol])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, stream)
            with suppress(Exception):
                await stream.write(payload)
                await stream.close()
            # A stream the node accepted as valid (a decodable gossip RPC) stays open on its side: stop waiting.
            with trio.move_on_after(DRAIN_AFTER_CLOSE_S):
                await ended.wait()
            if not ended.is_set():
                # Still open (ping echoes the garbage back, 32 bytes at a time): reset it, which ends our read.
                # Cancelling the read instead can stop py-libp2p halfway through a frame and break the connection.
                with suppress(Exception):
                    await stream.reset()
                with trio.move_on_after(DRAIN_AFTER_CLOSE_S):
                    await ended.wait()
            nursery.cancel_scope.cancel()


def stream_errors(http: str) -> dict[str, float]:
    text = httpx.get(f"{http}/metrics", timeout=5).text
    return {m[0]: float(m[1]) for m in re.findall(r'swarm_stream_errors_total\{protocol="([^"]+)"\} (\S+)', text)}


def metric(http: str, name: str, label: str) -> float:
    text = httpx.get(f"{http}/metrics", timeout=5).text
    found = re.search(rf'{name}\{{\w+="{re.escape(label)}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def assert_serving(node: NodeProcess) -> None:
    assert httpx.get(f"{node.http}/healthz", timeout=5).status_code == 200
    body = {"model": "tiny", "prompt": "def fib(n):", "max_tokens": 8, "temperature": 0}
    reply = httpx.post(f"{node.http}/v1/completions", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1
    assert node.proc.poll() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> NodeProcess:  # type: ignore[misc]
    """One serving node for the whole module: each test attacks it from a new identity and checks deltas."""
    node = NodeProcess(tmp_path_factory.mktemp("foreign"), "s", list(SERVE)).wait_ready(timeout_s=120)
    yield node
    node.stop()


async def test_random_bytes_on_every_protocol_leave_the_node_serving(server: NodeProcess) -> None:
    async with foreign_peer(server) as (host, peer):
        protocols = await host.send_command(peer, "ls")  # what the node's multiselect serves, asked at runtime
        assert {*GOSSIP, PEERS_PROTOCOL, GENERATE_PROTOCOL, "/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"} <= set(protocols)
        for protocol in protocols:
            await write_and_close(host, peer, protocol, os.urandom(GARBAGE_BYTES))
    # Garbage on our protocols and on gossipsub ends those streams, each counted under its protocol (identify and
    # ping ignore or echo bytes by design: they end without an error).
    wait_until(lambda: all(stream_errors(server.http).get(p, 0) >= 1 for p in (*GOSSIP, PEERS_PROTOCOL)), 20)
    assert stream_errors(server.http).get(GENERATE_PROTOCOL, 0) >= 1
    assert_serving(server)


async def test_malformed_gossipsub_rpcs_are_refused(server: NodeProcess) -> None:
    absurd = rpc_pb2.RPC()
    absurd.subscriptions.add(subscribe=True, topicid="\x00" * 1000)
    for i in range(2000):  # IHAVE for a topic nobody has, with ids that are not message ids
        absurd.control.ihave.add(topicID=f"no-such-topic-{i}", messageIDs=[os.urandom(40)])
    absurd.control.graft.add(topicID="")
    absurd.publish.add(from_id=os.urandom(7), data=b"x", seqno=os.urandom(3), topicIDs=["\xff"])
    decodes = absurd.SerializeToString()
    garbage = b"\xff" * 64  # field 31, wire type 7: not protobuf
    cases = {
        "bad protobuf": encode_uvarint(len(garbage)) + garbage,
        "truncated rpc": encode_uvarint(4096) + os.urandom(10),
        "huge length": encode_uvarint(1 << 40) + b"\x00",
    }
    before = stream_errors(server.http).get("/meshsub/1.1.0", 0)
    async with foreign_peer(server) as (host, peer):
        for payload in cases.values():
            await write_and_close(host, peer, "/meshsub/1.1.0", payload)
        # An RPC that decodes, with absurd contents: handled or refused, never raised into the node.
        await write_and_close(host, peer, "/meshsub/1.1.0", encode_uvarint(len(decodes)) + decodes)
    wait_until(lambda: stream_errors(server.http).get("/meshsub/1.1.0", 0) >= before + len(cases), 20)
    assert_serving(server)


async def test_a_peer_past_the_bad_stream_threshold_is_dropped(server: NodeProcess) -> None:
    threshold = StreamGuardConfig().max_bad_streams
    before = stream_errors(server.http).get(PEERS_PROTOCOL, 0)
    banned_before = metric(server.http, "swarm_stream_errors_total", "banned_peer")
    dropped_before = metric(server.http, "swarm_peers_dropped_total", "bad_streams")
    async with foreign_peer(server) as (host, peer):
        for _ in range(threshold):
            await write_and_close(host, peer, PEERS_PROTOCOL, encode_uvarint(100) + b"\x81")
        wait_until(lambda: metric(server.http, "swarm_peers_dropped_total", "bad_streams") == dropped_before + 1, 20)
        # Banned: the node drops the connection (seen from the peer's side), and refuses it when it comes back.
        with trio.fail_after(20):
            while host.get_network().get_connections(peer):
                await trio.sleep(0.05)
        # Coming back is refused: the new connection is dropped and counted before it carries anything.
        with trio.move_on_after(10):
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(server.addr)))
            await write_and_close(host, peer, PEERS_PROTOCOL, b"")
    wait_until(lambda: metric(server.http, "swarm_stream_errors_total", "banned_peer") > banned_before, 20)
    assert stream_errors(server.http)[PEERS_PROTOCOL] == before + threshold
    assert_serving(server)


async def test_silent_streams_are_ended_at_the_request_deadline(server: NodeProcess) -> None:
    before = stream_errors(server.http)
    timeouts_before = metric(server.http, "swarm_refused_messages_total", "TIMEOUT")
    async with foreign_peer(server) as (host, peer):
        for protocol in (PEERS_PROTOCOL, GENERATE_PROTOCOL):
            stream = await host.new_stream(peer, [protocol])  # opened, then nothing written: a slow writer
            with trio.fail_after(30):
                try:
                    while await stream.read(65536):  # the node's TIMEOUT reply, then its end of the stream
                        pass
                except Exception:
                    pass  # or a reset: either way the node ended it
    errors = stream_errors(server.http)
    assert errors.get(PEERS_PROTOCOL, 0) == before.get(PEERS_PROTOCOL, 0) + 1
    assert errors.get(GENERATE_PROTOCOL, 0) == before.get(GENERATE_PROTOCOL, 0) + 1
    assert metric(server.http, "swarm_refused_messages_total", "TIMEOUT") == timeouts_before + 2
    assert_serving(server)
