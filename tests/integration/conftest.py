from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nodes import NodeProcess


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator:
    """Factory: ``start_node(name, *args)`` starts a `swarm join` process; all are killed at teardown."""
    started: list[NodeProcess] = []

    def _start(name: str, *args: str, wait: bool = True) -> NodeProcess:
        node = NodeProcess(tmp_path, name, list(args))
        started.append(node)
        return node.wait_ready() if wait else node

    yield _start
    for node in started:
        node.stop()
