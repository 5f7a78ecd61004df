"""Real nodes in one trio loop on 127.0.0.1: routing asks a serving peer's load on `/swarm/load/1.0.0`; a peer that
answers absurd figures is refused, counted, dropped from the route and avoided; one that floods statuses holds one
entry in the table; and a joiner's first peer exchange hands it the serving peers with their announces."""

from __future__ import annotations

import math

import msgpack
import pytest
import trio

from comms.identity import generate_identity
from comms.streams import MessageStream
from protocols import encode, encode_frame
from protocols.errors import ErrorCode
from protocols.ids import LOAD_PROTOCOL
from protocols.status import LOAD_LIMITS, PeerStatus
from swarm.gateway.routing import RouteState
from swarm.runtime.config import build_config
from swarm.runtime.node import Node

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(120)]
TINY_ID = "swarm-embedded-tiny-seed0"


def _config(peers: list[str], roles: list[str]):  # type: ignore[no-untyped-def]
    return build_config({
        "node": {"roles": roles},
        # a load query's deadline generous enough for a busy machine: what is checked is what the answer holds
        "network": {"listen": ["/ip4/127.0.0.1/tcp/0"], "peers": peers, "heartbeat_s": 0.3, "peer_timeout_s": 5,
                    "load_query_timeout_s": 10.0},
        "serving": {"model": "tiny", "dtype": "float32", "num_threads": 1},
    })  # fmt: skip


class LiarNode(Node):
    """Announces that it serves the tiny model and answers every load query with a decode rate of 1e30 tok/s."""

    def make_announce(self, *, heartbeat: bool = True):  # type: ignore[no-untyped-def]
        announce = super().make_announce(heartbeat=heartbeat)
        announce.roles, announce.model_id = ["serve"], TINY_ID
        return announce

    def start_lying(self) -> None:
        async def absurd(stream: MessageStream, remote: str) -> None:
            await stream.receive(1.0)
            body = {"type": "load_reply", "v": [1, 0], "load": {"running": 0, "waiting": 0, "predicted_ttft_ms": 0.0,
                    "decode_tok_s": 1e30, "free_kv_tokens": 0, "prefill_tok_s": 1e30}, "model_hash": "x"}  # fmt: skip
            await stream.stream.write(encode_frame(msgpack.packb(body)))

        self.host.set_handler(LOAD_PROTOCOL, absurd, LOAD_LIMITS)


async def _wait(predicate, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.1)


async def test_absurd_load_answers_are_refused_and_floods_hold_one_entry() -> None:
    async with trio.open_nursery() as nursery:
        honest = Node(_config([], ["serve"]), generate_identity())
        await nursery.start(honest.run)
        boot = [honest.host.dialable_addrs()[0]]
        liar = LiarNode(_config(boot, []), generate_identity())
        liar.start_lying()
        await nursery.start(liar.run)
        asker = Node(_config(boot, []), generate_identity())
        await nursery.start(asker.run)
        await _wait(lambda: honest.peer_id in asker.membership and liar.peer_id in asker.membership)
        # The asker learnt the serving peer from its first peer exchange, with its model, before any gossip.
        assert "serve" in asker.membership.get(honest.peer_id).announce.roles

        for pid in (honest.peer_id, liar.peer_id):
            asker.membership.get(pid).load_at = -math.inf  # stale: the route must ask
        state = RouteState()
        candidates = [asker.membership.get(p).announce for p in (liar.peer_id, honest.peer_id)]
        fresh = await asker.load_probe.refresh(candidates, state)
        assert [a.peer_id for a in fresh] == [honest.peer_id]
        assert state.avoided(liar.peer_id) and not state.avoided(honest.peer_id)
        assert asker.metrics.snapshot()["refused"].get(ErrorCode.BAD_REQUEST.name, 0) >= 1
        assert asker.membership.get(honest.peer_id).load_at > 0
        assert fresh[0].load.decode_tok_s > 0  # the honest engine's own figure

        size = len(asker.membership)
        for seq in range(1000, 1300):  # a burst of statuses from one peer
            status = PeerStatus(peer_id=liar.peer_id, seq=seq, timestamp_ms=seq, period_s=0.3)
            await liar.host.publish(liar.status_topic, encode(status))
        await _wait(lambda: asker.membership.get(liar.peer_id).status_seq >= 1000)
        assert len(asker.membership) == size
        for node in (asker, liar, honest):
            node.stop()
