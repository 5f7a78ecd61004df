"""Real nodes in one trio loop (libp2p on 127.0.0.1, real engines on the embedded tiny model): a remote caller's
priority is clamped by the serving node, and an answer whose peer dies is finished only by a peer with the same
weights, although another peer with the same model name (other weights) is predicted faster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from comms.identity import generate_identity
from serving.request import GenerateParams
from swarm.client import AsyncClient
from swarm.runtime.config import build_config
from swarm.runtime.node import Node

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(180)]

PROMPT = "def fib(n):"


def _serving(seed: int, peers: list[str], **serving: Any) -> Node:
    config = build_config({
        "node": {"roles": ["serve"]},
        "network": {"listen": ["/ip4/127.0.0.1/tcp/0"], "peers": peers, "heartbeat_s": 0.3, "peer_timeout_s": 3},
        "serving": {"model": "tiny", "model_seed": seed, "dtype": "float32", "num_threads": 1, **serving},
    })  # fmt: skip
    return Node(config, generate_identity())


def _spy(node: Node) -> list[GenerateParams]:
    """Every GenerateParams this node's engine is given (the real engine still runs them)."""
    engine, seen = node.serve_role.engine, []
    submit = engine.submit

    def recording(params: GenerateParams, sink: Any) -> None:
        seen.append(params)
        submit(params, sink)

    engine.submit = recording
    return seen


@asynccontextmanager
async def _swarm(seeds: list[int], **serving: Any) -> AsyncIterator[tuple[list[Node], AsyncClient]]:
    async with trio.open_nursery() as nursery:
        first = _serving(seeds[0], [], **serving)
        await nursery.start(first.run)
        bootstrap = [first.host.dialable_addrs()[0]]
        nodes = [first]
        for seed in seeds[1:]:
            nodes.append(_serving(seed, bootstrap, **serving))
            await nursery.start(nodes[-1].run)
        async with AsyncClient(bootstrap, timeout_s=20, stall_timeout_s=10) as client:
            await client.wait_for_servers(len(nodes), model="tiny", timeout_s=60)
            yield nodes, client
        for node in nodes:
            node.stop()


async def test_remote_priority_is_clamped_by_the_serving_node() -> None:
    async with _swarm([0], min_priority=-3, max_priority=2) as (nodes, client):
        seen = _spy(nodes[0])
        for priority in (10**9, -(10**9), 1):
            result = await client.generate(PROMPT, model="tiny", max_new_tokens=2, priority=priority)
            assert len(result.token_ids) == 2
        assert [p.priority for p in seen] == [2, -3, 1]


async def test_resume_goes_only_to_a_peer_with_the_same_weights() -> None:
    async with _swarm([0, 1, 0], slowdown_factor=4) as (nodes, client):
        by_id = {n.peer_id: n for n in nodes}
        hashes = {n.peer_id: n.serve_role.engine.model_hash for n in nodes}
        other = nodes[1].peer_id  # seed 1: same model name "tiny", other weights
        assert hashes[other] != hashes[nodes[0].peer_id] == hashes[nodes[2].peer_id]
        seen_by_other = _spy(nodes[1])
        state = client.dispatch.state
        state.avoid(other, 600)  # the answer starts on a seed-0 peer
        tokens, text, killed, after = [], "", None, []
        async for delta in client.stream(PROMPT, model="tiny", max_new_tokens=40):
            tokens.extend(delta.token_ids)
            text += delta.text
            if killed is not None:
                after.append(delta.peer_id)
            elif len(tokens) >= 4:
                killed = delta.peer_id
                state.avoid_until.pop(other)  # from now on "other" is a candidate by name, and an idle one
                by_id[killed].stop()
        assert killed is not None and killed != other
        survivor = next(n for n in (nodes[0], nodes[2]) if n.peer_id != killed)
        assert after and set(after) <= {killed, survivor.peer_id} and after[-1] == survivor.peer_id
        assert seen_by_other == []  # never asked, although it serves "tiny"
        engine = survivor.serve_role.engine
        prompt_ids = engine.tokenizer(PROMPT)["input_ids"]
        reference = await trio.to_thread.run_sync(
            lambda: engine.generate(GenerateParams(prompt_token_ids=prompt_ids, max_new_tokens=40)).token_ids
        )
        assert tokens == reference
        assert text == engine.tokenizer.decode(reference, skip_special_tokens=True)
