"""Protocol ids and gossip topic names.

Stream protocols are named `/swarm/<name>/<major>.<minor>.<patch>`; gossip topics `swarm/<swarm_id>/<topic>`.
"""

from __future__ import annotations

import re

PEERS_PROTOCOL = "/swarm/peers/1.0.0"
GENERATE_PROTOCOL = "/swarm/generate/1.0.0"
TENSOR_PROTOCOL = "/swarm/tensor/1.0.0"
LOAD_PROTOCOL = "/swarm/load/1.0.0"

ANNOUNCE_TOPIC = "announce"
STATUS_TOPIC = "status"
ROLLOUTS_TOPIC = "rollouts"

_SWARM_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def check_swarm_id(swarm_id: str) -> str:
    """Swarm ids are 1-64 characters of letters, digits, '.', '_' or '-' (they appear inside topic names)."""
    if not _SWARM_ID.match(swarm_id):
        raise ValueError(f"swarm id must match {_SWARM_ID.pattern}, got {swarm_id!r}")
    return swarm_id


def topic(swarm_id: str, name: str) -> str:
    """The gossip topic ``name`` of swarm ``swarm_id``."""
    return f"swarm/{check_swarm_id(swarm_id)}/{name}"
