"""A part of the node that dies is visible: the serving engine's step loop fails in a real in-process node, and
the node answers /healthz 503 with the reason, stops announcing `serve`, refuses generation with a typed code,
and keeps serving its peers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from comms.config import NetworkConfig
from comms.host import P2PHost
from comms.identity import generate_identity
from protocols import STREAM_LIMITS, ErrorCode, GenerateRejected, GenerateRequest
from protocols.ids import GENERATE_PROTOCOL
from swarm.runtime.config import load_config
from swarm.runtime.node import Node

pytestmark = [pytest.mark.multipeer, pytest.mark.timeout(120)]

INJECTED = "injected step failure"


def serving_node_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    flags = {
        "network.listen": ["/ip4/127.0.0.1/tcp/0"],
        "node.roles": ["serve"],
        "node.http": "127.0.0.1:0",
        "serving.model": "tiny",
        "serving.dtype": "float32",
        "serving.num_threads": 1,
        "serving.latency_profile_path": str(tmp_path / "latency.json"),
    }
    return load_config(None, flags=flags)


def _broken_execute(_output: object) -> None:
    raise RuntimeError(INJECTED)


async def test_engine_thread_death_is_reported_and_the_node_keeps_running(tmp_path: Path) -> None:
    node = Node(serving_node_config(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        assert node.make_announce(heartbeat=False).roles == ["serve"]
        assert node.health() == ("ok", None)
        engine = node.serve_role.engine
        engine.runner.execute = _broken_execute  # the step loop calls it even when idle
        with trio.fail_after(30):
            while node.health()[0] == "ok":
                await trio.sleep(0.05)

        expected = f"serve: engine thread died: RuntimeError: {INJECTED}"
        assert node.health() == ("failed", expected)
        assert engine.failure == expected.removeprefix("serve: ")
        announce = node.make_announce(heartbeat=False)
        assert announce.roles == [] and announce.model_id == ""
        assert node.serving_view() is None

        async with httpx.AsyncClient(base_url=node.http_url, timeout=10) as http:
            health = await http.get("/healthz")
            assert health.status_code == 503
            assert health.json()["status"] == "failed" and health.json()["reason"] == expected
            peers = await http.get("/v1/swarm/peers")
            assert peers.status_code == 200 and peers.json()[0]["roles"] == []

        # A peer that still asks this node to generate gets a typed refusal naming the failure.
        asker = P2PHost(NetworkConfig(listen=["/ip4/127.0.0.1/tcp/0"]), generate_identity())
        await nursery.start(asker.run)
        await asker.connect(node.host.dialable_addrs()[0])
        stream = await asker.open_stream(node.peer_id, GENERATE_PROTOCOL, STREAM_LIMITS)
        await stream.send(GenerateRequest(request_id="r1", prompt="hello", max_new_tokens=4))
        reply = await stream.receive(10)
        assert isinstance(reply, GenerateRejected)
        assert reply.error_code == ErrorCode.INTERNAL and INJECTED in reply.message
        await stream.close()
        nursery.cancel_scope.cancel()
