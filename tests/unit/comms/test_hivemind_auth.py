"""The swarm-key MACs of the averaging stack: a DHT request passes once with the key and never without it, tampered,
replayed or stale; a response must answer its own request; the averaging hello admits both sides only when both
hold the key, and binds the caller's peer id. Where the averaging stack listens follows the node's listen list.

hivemind cannot be imported in a process that imports libp2p, so the MAC checks run in a fresh interpreter."""

from __future__ import annotations

import pytest

from comms.averaging import averaging_host_maddrs
from tests.unit.comms.fresh_interpreter import assert_script_prints_ok

AUTH_SCRIPT = r"""
import asyncio
from types import SimpleNamespace

from hivemind.p2p import PeerID
from hivemind.proto import dht_pb2
from hivemind.proto.auth_pb2 import RequestAuthInfo

from comms.hivemind_auth import (MAX_CLOCK_SKEW_S, ReplayGuard, SwarmKeyAuthorizer, SwarmKeyGate, SwarmKeyRefused,
                                 derive_auth_key)

KEY, OTHER = derive_auth_key("11" * 32), derive_auth_key("22" * 32)
assert KEY != OTHER and KEY != bytes.fromhex("11" * 32)


class Clock:
    now = 1000.0
    def __call__(self):
        return self.now


async def dht_checks():
    clock = Clock()
    server, client = SwarmKeyAuthorizer(KEY, clock), SwarmKeyAuthorizer(KEY, clock)
    outsider = SwarmKeyAuthorizer(OTHER, clock)
    req = dht_pb2.PingRequest(validate=True)
    await client.sign_request(req, None)
    wire = req.SerializeToString()
    assert await server.validate_request(dht_pb2.PingRequest.FromString(wire))
    assert not await server.validate_request(dht_pb2.PingRequest.FromString(wire))  # replayed
    assert not await server.validate_request(dht_pb2.PingRequest())  # no auth at all (a keyless hivemind)
    forged = dht_pb2.PingRequest(validate=True)
    await outsider.sign_request(forged, None)
    assert not await server.validate_request(forged)  # another key
    tampered = dht_pb2.PingRequest(validate=True)
    await client.sign_request(tampered, None)
    tampered.validate = False
    assert not await server.validate_request(tampered)
    stale = dht_pb2.PingRequest(validate=True)
    clock.now -= MAX_CLOCK_SKEW_S + 1
    await client.sign_request(stale, None)
    clock.now += MAX_CLOCK_SKEW_S + 1
    assert not await server.validate_request(stale)
    assert server.refused == 5

    req = dht_pb2.PingRequest(validate=True)
    await client.sign_request(req, None)
    resp = dht_pb2.PingResponse(available=True)
    await server.sign_response(resp, req)
    assert await client.validate_response(dht_pb2.PingResponse.FromString(resp.SerializeToString()), req)
    other_req = dht_pb2.PingRequest(validate=True)
    await client.sign_request(other_req, None)
    assert not await client.validate_response(dht_pb2.PingResponse.FromString(resp.SerializeToString()), other_req)
    bad = dht_pb2.PingResponse(available=True)
    await outsider.sign_response(bad, req)
    assert not await client.validate_response(bad, req)
    assert client.refused == 2


def test_replay_guard():
    clock = Clock()
    guard = ReplayGuard(clock, max_nonces=2)
    assert guard.accept(clock.now, b"a" * 16) and not guard.accept(clock.now, b"a" * 16)
    assert not guard.accept(clock.now, b"short")
    assert guard.accept(clock.now, b"b" * 16) and not guard.accept(clock.now, b"c" * 16)  # full: refused
    clock.now += 3 * MAX_CLOCK_SKEW_S  # the old nonces expire with their window
    assert guard.accept(clock.now, b"c" * 16)


class FakeP2P:
    # Delivers a hello to `server` as p2pd would: with the caller's authenticated peer id.
    def __init__(self, caller, server):
        self.caller, self.server = caller, server
    async def call_protobuf_handler(self, peer, name, request, reply_type):
        assert peer == self.server.local_id and name.endswith("swarm_key_hello")
        context = SimpleNamespace(remote_id=self.caller)
        wire = await self.server.handle_hello(RequestAuthInfo.FromString(request.SerializeToString()), context)
        return reply_type.FromString(wire.SerializeToString())


async def hello_checks():
    ids = [PeerID(bytes([0x12, 0x20]) + bytes([i]) * 32) for i in range(3)]
    a, b = SwarmKeyGate(KEY, ids[0]), SwarmKeyGate(KEY, ids[1])
    assert not b.admitted(ids[0]) and not a.admitted(ids[1]) and a.admitted(ids[0])
    await a.ensure(FakeP2P(ids[0], b), ids[1], "ns", 5.0)
    assert a.admitted(ids[1]) and b.admitted(ids[0])  # both ways in one hello
    b.check(SimpleNamespace(remote_id=ids[0]))

    keyless = SwarmKeyGate(OTHER, ids[2])
    try:
        await keyless.ensure(FakeP2P(ids[2], b), ids[1], "ns", 5.0)
        raise AssertionError("a hello with another key was accepted")
    except SwarmKeyRefused:
        pass
    assert not b.admitted(ids[2]) and not keyless.admitted(ids[1])
    try:
        b.check(SimpleNamespace(remote_id=ids[2]))
        raise AssertionError("an averaging RPC from a keyless peer passed")
    except SwarmKeyRefused:
        pass

    # A keyed peer's proof relayed by another peer id fails: the MAC binds the caller's authenticated id.
    c = SwarmKeyGate(KEY, ids[2])
    relay = FakeP2P(ids[0], SwarmKeyGate(KEY, ids[1]))
    try:
        await c.ensure(relay, ids[1], "ns", 5.0)
        raise AssertionError("a relayed hello was accepted")
    except SwarmKeyRefused:
        pass
    assert b.refused == 2 and keyless.refused == 1


asyncio.run(dht_checks())
test_replay_guard()
asyncio.run(hello_checks())
print("ok")
"""


@pytest.mark.timeout(60)
def test_swarm_key_macs_refuse_keyless_tampered_and_replayed_requests() -> None:
    assert_script_prints_ok(AUTH_SCRIPT)


def test_averaging_listens_where_the_node_listens() -> None:
    assert averaging_host_maddrs(["/ip4/127.0.0.1/tcp/4001"]) == ("/ip4/127.0.0.1/tcp/0",)
    assert averaging_host_maddrs(["/ip4/10.1.2.3/tcp/1", "/ip6/::1/tcp/2", "/ip4/10.1.2.3/tcp/5"]) == (
        "/ip4/10.1.2.3/tcp/0",
        "/ip6/::1/tcp/0",
    )
    assert averaging_host_maddrs(["/ip4/0.0.0.0/tcp/0"]) == ("/ip4/0.0.0.0/tcp/0",)  # only when the node does
    with pytest.raises(ValueError, match="no /ip4 or /ip6"):
        averaging_host_maddrs(["/dns4/example.org/tcp/1"])
