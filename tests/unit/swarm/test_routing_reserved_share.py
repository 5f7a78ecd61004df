"""A node whose training (or late rollouts) reserve a share of its serving device announces less headroom, so
routers send online work to a node that serves alone. Announces come from a real engine's `load()` through the
serve role, as gossip carries them."""

from __future__ import annotations

import math

from protocols import Device, PeerAnnounce
from swarm.gateway.routing import MIN_HEADROOM, RouteState, predicted_ttft_ms, rank_peers
from swarm.runtime.roles import ServeRole
from tests.unit.serving.helpers import tiny_config

PROMPT_TOKENS = 128


def _announce(role: ServeRole, peer: str) -> PeerAnnounce:
    announce = PeerAnnounce(peer_id=peer, addrs=[], version="t", timestamp_ms=0, roles=["serve"],
                            devices=[Device("cpu", "x", 1 << 30)])  # fmt: skip
    role.fill_announce(announce)
    return announce


def test_a_training_node_announces_less_headroom_and_routers_prefer_the_node_serving_alone(tmp_path) -> None:
    from serving.engine import Engine

    # Slowed so that the probe's predicted TTFT is well above the 1 ms floor routing applies to any announce.
    with Engine(tiny_config(tmp_path, slowdown_factor=50.0)) as engine:
        role = ServeRole(engine.config)
        role.engine = engine
        alone = _announce(role, "alone")
        engine.reserved_share = 0.5  # what the arbiter sets while training shares this engine's device
        training = _announce(role, "training")
    assert math.isclose(training.load.predicted_ttft_ms, 2 * alone.load.predicted_ttft_ms, rel_tol=1e-6)
    assert math.isclose(training.load.prefill_tok_s, alone.load.prefill_tok_s / 2, rel_tol=1e-6)
    assert alone.devices[0].decode_tok_s > 0 and alone.devices[0].prefill_tok_s > 0  # measured speeds announced

    ttft_alone = predicted_ttft_ms(alone, 0, PROMPT_TOKENS)
    assert math.isclose(predicted_ttft_ms(training, 0, PROMPT_TOKENS), 2 * ttft_alone, rel_tol=1e-6)
    # A target the node serving alone meets with room to spare, and the training node would not.
    target = 1.5 * ttft_alone / (1 - MIN_HEADROOM)
    for _ in range(20):  # headroom-weighted sampling: the node without room is never drawn first
        order = rank_peers([training, alone], None, RouteState(), ttft_ms=target, prompt_tokens=PROMPT_TOKENS)
        assert [a.peer_id for a in order] == ["alone", "training"]
    order = rank_peers([training, alone], None, RouteState(), prompt_tokens=PROMPT_TOKENS)
    assert [a.peer_id for a in order] == ["alone", "training"]
