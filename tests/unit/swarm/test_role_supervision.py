"""How the node supervises its roles: a failure before readiness ends start-up with that error; one after it is
recorded in one line, the role is no longer announced, and health says degraded or failed."""

from __future__ import annotations

import pytest
import trio

from comms.identity import generate_identity
from swarm.runtime.config import load_config
from swarm.runtime.node import Node
from swarm.runtime.roles import Role, RoleFailed


class FakeRole(Role):
    def __init__(self, name: str, fail_before_start: bool = False) -> None:
        self.name = name
        self.fail_before_start = fail_before_start
        self.fail_now = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.fail_before_start:
            raise RoleFailed(f"{self.name} cannot start")
        task_status.started()
        await self.fail_now.wait()
        async with trio.open_nursery() as nursery:  # the failure arrives wrapped, as from real services
            nursery.start_soon(_raise, ValueError("disk\nfull"))


async def _raise(err: Exception) -> None:
    raise err


def make_node(*roles: FakeRole) -> Node:
    config = load_config(None, flags={"network.listen": ["/ip4/127.0.0.1/tcp/0"], "node.roles": []})
    node = Node(config, generate_identity())
    node.roles = list(roles)
    node.config.node.roles = [r.name for r in roles]
    return node


async def test_a_role_failing_after_start_is_recorded_and_no_longer_announced() -> None:
    serve, train = FakeRole("serve"), FakeRole("train")
    node = make_node(serve, train)
    async with trio.open_nursery() as nursery:
        for role in node.roles:
            await nursery.start(node._run_role, role)
        assert node.health() == ("ok", None)
        assert node.live_role_names() == ["serve", "train"]
        train.fail_now.set()
        with trio.fail_after(5):
            while train.failure is None:
                await trio.sleep(0.01)
        assert node.health() == ("degraded", "train: ValueError: disk full")
        assert node.make_announce(heartbeat=False).roles == ["serve"]
        serve.fail_now.set()
        with trio.fail_after(5):
            while serve.failure is None:
                await trio.sleep(0.01)
        assert node.health() == ("failed", "serve: ValueError: disk full; train: ValueError: disk full")
        assert node.make_announce(heartbeat=False).roles == []
        nursery.cancel_scope.cancel()


async def test_a_role_failing_before_start_ends_the_start_up_with_its_error() -> None:
    role = FakeRole("serve", fail_before_start=True)
    node = make_node(role)
    with pytest.raises(ExceptionGroup) as raised:
        async with trio.open_nursery() as nursery:
            await nursery.start(node._run_role, role)
    assert raised.group_contains(RoleFailed, match="serve cannot start")
    assert role.failure is None
