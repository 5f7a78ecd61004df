"""How averagers find their group: hivemind's matchmaking with fewer DHT requests per round.

Every hivemind request is a new libp2p stream: about 500 bytes at the sockets for a ping on 127.0.0.1, where the
tensor parts of one exchange of a 133k-parameter model in int4 are about 53 KB per peer. `install()` replaces, in
hivemind's matchmaking module, the queue of potential leaders (`_PacedPotentialLeaders`) and the group key
manager (`_ReplicaReadingKeyManager`); it runs in the averaging process (`comms.hivemind_worker`) before the
averager is created. This module knows nothing about tensors, codecs or training.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from math import isfinite
from typing import Any

from hivemind import DHT
from hivemind.averaging import matchmaking
from hivemind.averaging.key_manager import GroupKey, GroupKeyManager, is_valid_group
from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import PeerID
from hivemind.utils import TimedStorage, ValueWithExpiration
from hivemind.utils.timed_storage import MAX_DHT_TIME_DISCREPANCY_SECONDS, DHTExpiration, get_dht_time


class _PacedPotentialLeaders(matchmaking.PotentialLeaders):
    """hivemind's queue of leaders to join, except that its DHT lookups of the group key are at least half a
    matchmaking period apart, and the first one waits until this peer's own declaration is stored.

    In hivemind a peer whose queue is empty asks for a new lookup as soon as the last one returns, so a peer that
    reaches a round before the others repeats DHT traversals back to back while it waits (measured: about 120 KB
    per second per waiting peer on 127.0.0.1, tens of times the tensor parts of a small model). Peers re-declare
    themselves once per matchmaking period, so looking twice per period still sees every declaration; a peer
    that arrives last looks at once and joins without waiting. hivemind also starts the first lookup together
    with the declaration, so peers that reach a round together each look before the others' declarations land,
    find nobody and look again half a period later (measured on 127.0.0.1: 1.9 lookups of 3 DHT requests each
    per peer and round, and 1.5 s per round); looking once the own declaration is stored finds them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._declares = False
        self._declaration_stored = asyncio.Event()

    @contextlib.asynccontextmanager
    async def begin_search(
        self, step: Any, key_manager: GroupKeyManager, declare: bool = True
    ) -> AsyncIterator[_PacedPotentialLeaders]:
        self._declares = declare
        self._declaration_stored.clear()
        async with super().begin_search(step, key_manager, declare=declare):
            yield self

    async def _update_queue_periodically(self, key_manager: GroupKeyManager) -> None:
        pause_s = self.min_matchmaking_time / 2
        if self._declares:  # bounded: a slow or failed store delays the first lookup by at most a pause
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._declaration_stored.wait(), pause_s)
        looked_at = float("-inf")
        while get_dht_time() < self.search_end_time:
            wait_s = min(looked_at + pause_s, self.search_end_time) - get_dht_time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            looked_at = get_dht_time()
            new_peers = await key_manager.get_averagers(key_manager.current_key, only_active=True)
            self.max_assured_time = max(
                self.max_assured_time, get_dht_time() + self.min_matchmaking_time - MAX_DHT_TIME_DISCREPANCY_SECONDS
            )
            self.leader_queue.clear()
            for peer, peer_expiration_time in new_peers:
                if peer == self.peer_id or (peer, peer_expiration_time) in self.past_attempts:
                    continue
                self.leader_queue.store(peer, peer_expiration_time, peer_expiration_time)
                self.max_assured_time = max(
                    self.max_assured_time, peer_expiration_time - MAX_DHT_TIME_DISCREPANCY_SECONDS
                )
            self.update_finished.set()
            await asyncio.wait(
                {asyncio.create_task(self.running.wait()), asyncio.create_task(self.update_triggered.wait())},
                return_when=asyncio.ALL_COMPLETED,
                timeout=self.search_end_time - get_dht_time() if isfinite(self.search_end_time) else None,
            )
            self.update_triggered.clear()

    async def _declare_averager_periodically(self, step: Any, key_manager: GroupKeyManager) -> None:
        """hivemind's, except that a peer that stops looking does not store a second record saying so: its
        declaration expires within a matchmaking period, and a peer that asks it to lead meanwhile is refused
        at once (one request to one peer, where the extra record was a DHT store to every replica)."""
        async with self.lock_declare:
            try:
                while True:
                    await self.running.wait()
                    expiration_time = float(
                        min(max(step.scheduled_time, get_dht_time() + self.min_matchmaking_time), self.search_end_time)
                    )
                    self.declared_group_key = group_key = key_manager.current_key
                    self.declared_expiration_time = expiration_time
                    self.declared_expiration.set()
                    await key_manager.declare_averager(group_key, self.peer_id, expiration_time=expiration_time)
                    self._declaration_stored.set()
                    await asyncio.sleep(self.declared_expiration_time - get_dht_time())
                    if self.running.is_set() and len(self.leader_queue) == 0:
                        await key_manager.update_key_on_not_enough_peers()
            finally:
                self.declared_group_key, self.declared_expiration_time = None, float("inf")
                self.leader_queue, self.max_assured_time = TimedStorage[PeerID, float](), float("-inf")


def holds_replica(node: DHTNode, key_id: DHTID) -> bool:
    """Whether this node is one of the `num_replicas` nodes nearest to `key_id` that it knows of: a node every
    store of the key reaches (stores go to the `num_replicas` nearest nodes, the storer included)."""
    own = key_id.xor_distance(node.node_id)
    known = node.protocol.routing_table.get_nearest_neighbors(key_id, node.num_replicas, exclude=node.node_id)
    return sum(key_id.xor_distance(other) < own for other, _ in known) < node.num_replicas


def _local_dictionary(node: DHTNode, key_id: DHTID) -> ValueWithExpiration | None:
    """The key's subkeys in this node's own storage (not its cache), decoded as `DHTNode.get` decodes them."""
    stored = node.protocol.storage.get(key_id)
    if stored is None or not isinstance(stored.value, DictionaryDHTValue):
        return None
    out = {}
    for subkey, (value_bytes, expiration) in stored.value.items():
        if node.protocol.record_validator is not None:
            record = DHTRecord(key_id.to_bytes(), node.protocol.serializer.dumps(subkey), value_bytes, expiration)
            value_bytes = node.protocol.record_validator.strip_value(record)
        out[subkey] = ValueWithExpiration(node.protocol.serializer.loads(value_bytes), expiration)
    return ValueWithExpiration(out, stored.expiration_time)


async def find_declarations(_dht: DHT, node: DHTNode, key: GroupKey) -> ValueWithExpiration | None:
    """Runs in the DHT process: the declarations under `key`, as `DHT.get(key, latest=True)` returns them. A
    replica of the key already holds every declaration (each was stored to all replicas) and reads its own
    storage; any other node asks the DHT."""
    key_id = DHTID.generate(source=key)
    if holds_replica(node, key_id):
        return _local_dictionary(node, key_id)
    return await node.get(key, latest=True)


class _ReplicaReadingKeyManager(GroupKeyManager):
    """hivemind's group key manager, except that a lookup is answered from this peer's own DHT storage when it
    is a replica of the group key (`find_declarations`). In a swarm of up to `num_replicas` (5) peers every peer
    is; a lookup then sends no request, where `DHT.get(latest=True)` asked every other peer (3 requests, about
    2 KB at the sockets, per lookup in a group of 4)."""

    async def get_averagers(self, group_key: GroupKey, only_active: bool) -> list[tuple[PeerID, DHTExpiration]]:
        if not is_valid_group(group_key):
            raise ValueError(f"group key {group_key!r} is not a valid hivemind group key")
        result = await self.dht.run_coroutine(partial(find_declarations, key=group_key), return_future=True)
        if result is None or not isinstance(result.value, dict):
            return []
        averagers = []
        for subkey, looking_for_group in result.value.items():
            try:
                if only_active and not looking_for_group.value:
                    continue
                averagers.append((PeerID(subkey), looking_for_group.expiration_time))
            except Exception:  # a malformed record from the network is skipped, as hivemind does
                continue
        return averagers


def install() -> None:
    """`Matchmaking` builds its queue and key manager from these module-level names (in the averaging process
    and the averager's, forked from it)."""
    matchmaking.PotentialLeaders = _PacedPotentialLeaders
    matchmaking.GroupKeyManager = _ReplicaReadingKeyManager
