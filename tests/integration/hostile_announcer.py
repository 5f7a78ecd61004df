"""A peer whose announces carry markup and script where a name, model id and version belong: what a hostile peer
would send to make a dashboard run its code. Everything else about it is an honest node.

Run as `python -m tests.integration.hostile_announcer INFO_FILE BOOTSTRAP_ADDR` (a fresh interpreter, as a peer).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from swarm.runtime.config import load_config
from swarm.runtime.node import Node

# Each would set window.__pwned if a page ever turned it into markup or script.
SCRIPT_MODEL_ID = "<script>window.__pwned='model'</script>"
SCRIPT_VERSION = "<img src=x onerror=\"window.__pwned='version'\">"
SCRIPT_ROLE = "<svg onload=\"window.__pwned='role'\"></svg>"


class HostileNode(Node):
    def make_announce(self, *, heartbeat: bool = True):  # type: ignore[no-untyped-def]
        announce = super().make_announce(heartbeat=heartbeat)
        announce.model_id = SCRIPT_MODEL_ID
        announce.version = SCRIPT_VERSION
        announce.roles = [SCRIPT_ROLE]
        return announce


async def main(info_file: Path, bootstrap: str) -> None:
    flags = {"network.listen": ["/ip4/127.0.0.1/tcp/0"], "network.peers": [bootstrap], "node.info_file": info_file,
             "network.heartbeat_s": 0.5}  # fmt: skip
    node = HostileNode(load_config(flags=flags))
    await node.run()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2])
