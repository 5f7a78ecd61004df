"""Hostile bytes from a real libp2p peer: refused with typed codes, counted in /metrics, the node keeps serving."""

from __future__ import annotations

import os
import re

import httpx
import msgpack
import pytest
import trio

from comms.config import NetworkConfig
from comms.host import P2PHost
from comms.identity import generate_identity
from comms.streams import RemoteError
from protocols import STREAM_LIMITS, ErrorCode, ErrorReply, PeersReply, PeersRequest, decode, encode_frame
from protocols.framing import FrameDecoder, encode_uvarint
from protocols.ids import ANNOUNCE_TOPIC, PEERS_PROTOCOL, topic

pytestmark = [pytest.mark.multipeer, pytest.mark.timeout(120)]


def _refused(http: str) -> dict[str, float]:
    text = httpx.get(f"{http}/metrics", timeout=5).text
    return {m[0]: float(m[1]) for m in re.findall(r'swarm_refused_messages_total\{code="(\w+)"\} (\S+)', text)}


async def _client(nursery: trio.Nursery) -> P2PHost:
    host = P2PHost(NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"]), generate_identity())
    await nursery.start(host.run)
    return host


async def _raw_exchange(host: P2PHost, peer_id: str, payload: bytes) -> ErrorReply | None:
    """Write raw bytes on the peers protocol, close our side, and read the node's reply (if any)."""
    stream = await host.open_stream(peer_id, PEERS_PROTOCOL, STREAM_LIMITS)
    await stream.stream.write(payload)
    await stream.stream.close()
    decoder, data = FrameDecoder(STREAM_LIMITS.max_message_bytes), b""
    with trio.move_on_after(5):
        while True:
            try:
                chunk = await stream.stream.read(65536)
            except EOFError:
                break
            if not chunk:
                break
            data += chunk
    frames = decoder.feed(data)
    return decode(frames[0]) if frames else None  # type: ignore[return-value]


async def test_garbage_is_refused_and_node_keeps_serving(start_node) -> None:
    node = start_node("a")
    async with trio.open_nursery() as nursery:
        client = await _client(nursery)
        await client.connect(node.addr)

        # 1 MB of random bytes: refused (oversized or malformed), stream closed, node alive.
        reply = await _raw_exchange(client, node.peer_id, os.urandom(1024 * 1024))
        assert reply is None or reply.error_code in (ErrorCode.TOO_LARGE, ErrorCode.MALFORMED)

        cases = {
            ErrorCode.TOO_LARGE: encode_uvarint(STREAM_LIMITS.max_message_bytes + 1) + b"x",
            ErrorCode.MALFORMED: encode_frame(b"\xc1\xc1\xc1"),
            ErrorCode.UNKNOWN_TYPE: encode_frame(msgpack.packb({"type": "no_such_thing", "v": [1, 0]})),
            ErrorCode.UNSUPPORTED_VERSION: encode_frame(msgpack.packb({"type": "peers_request", "v": [9, 0]})),
        }
        for code, payload in cases.items():
            reply = await _raw_exchange(client, node.peer_id, payload)
            assert isinstance(reply, ErrorReply), code
            assert reply.error_code == code
        wrong_type = encode_frame(msgpack.packb({"type": "peers_request", "v": [1, 0], "limit": "lots"}))
        reply = await _raw_exchange(client, node.peer_id, wrong_type)
        assert reply is not None and reply.error_code == ErrorCode.MALFORMED and reply.field == "limit"
        truncated = encode_uvarint(100) + b"\x81"  # frame says 100 bytes, stream ends after 1
        reply = await _raw_exchange(client, node.peer_id, truncated)
        assert reply is not None and reply.error_code == ErrorCode.MALFORMED

        # Garbage and spoofed announces on the gossip topic are refused too.
        await client.publish(topic("default", ANNOUNCE_TOPIC), b"\x00not msgpack")

        # A well-formed request still works afterwards.
        stream = await client.open_stream(node.peer_id, PEERS_PROTOCOL, STREAM_LIMITS)
        await stream.send(PeersRequest(limit=8))
        assert isinstance(await stream.receive_reply(PeersReply, 5), PeersReply)
        await stream.close()
        with pytest.raises(RemoteError):  # and a bad one still gets a typed error
            bad = await client.open_stream(node.peer_id, PEERS_PROTOCOL, STREAM_LIMITS)
            await bad.send(PeersReply(peers=[]))
            await bad.receive_reply(PeersReply, 5)
        nursery.cancel_scope.cancel()

    assert httpx.get(f"{node.http}/healthz", timeout=5).status_code == 200
    refused = _refused(node.http)
    for code in ("TOO_LARGE", "MALFORMED", "UNKNOWN_TYPE", "UNSUPPORTED_VERSION", "BAD_REQUEST"):
        assert refused.get(code, 0) >= 1, (code, refused)
    assert node.proc.poll() is None
