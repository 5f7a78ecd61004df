"""Discovery on a virtual clock with a stand-in host: a node whose links are up but whose gossip mesh stays empty
dials and asks its bootstrap peers again, backing off; one with a mesh link never does."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from comms.errors import DialError
from swarm.runtime.discovery import ISOLATED_REASK_S, Discovery
from swarm.runtime.membership import Membership


class FakeHost:
    peer_id = "self"

    def __init__(self) -> None:
        self.dials: list[float] = []

    def set_handler(self, *_args: object) -> None:
        pass

    def connected_peers(self) -> set[str]:
        return {"boot"} if self.dials else set()

    async def connect(self, addr: str) -> str:
        self.dials.append(trio.current_time())
        return "boot"

    async def open_stream(self, *_args: object) -> None:
        raise DialError("no streams here")


async def _dials(mesh_empty: bool, run_s: float) -> list[float]:
    host = FakeHost()
    discovery = Discovery(host, Membership("self", 10.0), ["/ip4/127.0.0.1/tcp/1/p2p/boot"], 16, 1.0,  # type: ignore[arg-type]
                          gossip_isolated=lambda: mesh_empty)  # fmt: skip
    with trio.move_on_after(run_s):
        await discovery.run_bootstrap()
    return host.dials


def test_links_without_a_mesh_ask_bootstrap_again_backing_off() -> None:
    dials = trio.run(_dials, True, 60.0, clock=trio.testing.MockClock(autojump_threshold=0))
    gaps = [b - a for a, b in itertools.pairwise(dials)]
    assert len(dials) >= 4
    assert all(gap >= ISOLATED_REASK_S[0] for gap in gaps)
    assert gaps[-1] > gaps[0]  # backing off


def test_a_node_with_a_mesh_link_dials_bootstrap_once() -> None:
    dials = trio.run(_dials, False, 60.0, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(dials) == 1
