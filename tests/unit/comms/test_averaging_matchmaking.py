"""Group lookups answered from a replica's own DHT storage: who counts as a replica, and that the stored
declarations come back as `DHT.get(latest=True)` returns them.

hivemind cannot be imported in a process that imports libp2p, so the checks run in a fresh interpreter."""

from __future__ import annotations

import pytest

from tests.unit.comms.fresh_interpreter import assert_script_prints_ok

SCRIPT = r"""
import asyncio
from types import SimpleNamespace
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DHTLocalStorage
from hivemind.utils.timed_storage import get_dht_time
from comms.hivemind_matchmaking import find_declarations, holds_replica

key = "run_abc.0b01"
key_id = DHTID.generate(source=key)
others = sorted((DHTID.generate() for _ in range(8)), key=key_id.xor_distance)

def node(own, known, num_replicas=5, storage=None):
    near = sorted(known, key=key_id.xor_distance)
    table = SimpleNamespace(
        get_nearest_neighbors=lambda q, k, exclude=None: [(n, f"peer{i}") for i, n in enumerate(near[:k])]
    )
    protocol = SimpleNamespace(
        routing_table=table, storage=storage or DHTLocalStorage(), serializer=DHTProtocol.serializer,
        record_validator=None,
    )
    async def remote_get(k, latest=False):
        return "asked the DHT"
    return SimpleNamespace(node_id=own, num_replicas=num_replicas, protocol=protocol, get=remote_get)

# fewer known nodes than replicas: every store reaches this node
assert holds_replica(node(others[-1], others[:3]), key_id)
# four of the five nearest known nodes are nearer: still one of the five
assert holds_replica(node(others[4], others[:4] + others[5:]), key_id)
# five known nodes are nearer: not a replica, the lookup goes to the DHT
far = node(others[5], others[:5] + others[6:])
assert not holds_replica(far, key_id)
assert asyncio.run(find_declarations(None, far, key)) == "asked the DHT"

storage = DHTLocalStorage()
now = get_dht_time()
ser = DHTProtocol.serializer
storage.store_subkey(key_id, b"peer-a", ser.dumps(True), now + 3)
storage.store_subkey(key_id, b"peer-b", ser.dumps(False), now + 2)
near = node(others[0], others[1:4], storage=storage)
found = asyncio.run(find_declarations(None, near, key))
assert found.expiration_time == now + 3, found
assert {k: (v.value, v.expiration_time) for k, v in found.value.items()} == {
    b"peer-a": (True, now + 3), b"peer-b": (False, now + 2)
}, found
assert asyncio.run(find_declarations(None, node(others[0], others[1:4]), key)) is None
print("ok")
"""


@pytest.mark.timeout(60)
def test_replica_answers_group_lookups_from_its_storage() -> None:
    assert_script_prints_ok(SCRIPT)
