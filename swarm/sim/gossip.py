"""Gossip at scale: how long a joining node takes to be known by 99% of the swarm, and how many gossip bytes a
node receives per second, with the node's real period policy (swarm/runtime/gossip_policy.py) and real membership tables
(swarm/runtime/membership.py) on the virtual clock.

Hot set / cold tail: `hot` nodes hold a real `Membership` fed, in time order, every announce and status that
reaches them (arrival = publish time + the mesh's shortest hop path, swarm/sim/network.py); the other nodes only
publish and relay, their periods those the hot nodes' size estimates give (every node runs the same policy).
A message reaches every subscriber (gossipsub floods its mesh), so what one node receives does not depend on
which nodes hold full state. Bytes are counted as the node's `gossip` counter counts them (comms/metrics.py):
the payload of each message delivered once, own messages included; the wire estimate adds mesh copies and
IHAVE ids. Knows messages' sizes, not their bytes: real encoded sizes are passed in.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass

from protocols import Load, PeerAnnounce, TrainingState
from protocols.status import PeerStatus
from swarm.runtime.gossip_policy import announce_period_s, status_period_s
from swarm.runtime.membership import Membership
from swarm.sim.clock import EventLoop
from swarm.sim.network import GOSSIP_DEGREE, GOSSIP_HEARTBEAT_S, Network

ANNOUNCE_POLL_S = 0.25  # swarm/runtime/node.py checks for its first mesh link this often, from its start
IHAVE_ID_BYTES = 50  # a gossipsub message id (origin + seqno) in an IHAVE
IHAVE_WINDOW = 3  # heartbeats of message ids gossiped (py-libp2p's gossip window)


@dataclass(frozen=True)
class GossipParams:
    """The node's settings the simulation uses (NetworkConfig's defaults unless a run says otherwise)."""

    heartbeat_s: float = 2.0
    peer_timeout_s: float = 10.0
    status_budget_msgs_s: float = 25.0
    max_peers: int = 2048
    max_peers_per_model: int = 256
    max_dial_peers: int = 16


def join_times(net: Network, joins: int, size_bytes: int, rng: random.Random) -> list[float]:
    """For ``joins`` nodes joining at random places: seconds from listening to being known by 99% of the swarm.

    A joiner dials one bootstrap peer (TCP + noise + yamux: `handshake_s` plus 3 round trips), grafts it into its
    mesh as soon as its subscription arrives (half a round trip later: py-libp2p grafts on a subscription while the
    mesh is below D_lo, without waiting for a heartbeat), publishes its announce at the next poll of
    swarm/runtime/node.py (every `ANNOUNCE_POLL_S` from its start), and the announce floods the mesh; the joiner's
    other mesh links (up to D) form as it dials the peers it learns of."""
    out = []
    n = net.n
    for _ in range(joins):
        me = rng.randrange(n)  # the joiner takes the place of a node: same region and uplink model
        boot = rng.choice([v for v in range(n) if v != me]) if n > 1 else me
        rtt = 2 * net.latency_s(me, boot)
        meshed = net.profile.handshake_s + 3.5 * rtt + net.profile.relay_s
        published = math.ceil(meshed / ANNOUNCE_POLL_S) * ANNOUNCE_POLL_S
        others = [v for v in range(n) if v != me]
        mesh = [boot, *rng.sample([v for v in others if v != boot], min(GOSSIP_DEGREE - 1, max(len(others) - 1, 0)))]
        extra = {me: mesh}
        for v in mesh:
            extra[v] = [*net.adj[v], me]
        arrival = sorted(t for v, t in enumerate(net.arrival_s(me, size_bytes, extra)) if v != me)
        if not arrival:
            out.append(published)
            continue
        out.append(published + arrival[min(int(0.99 * len(arrival) + 0.999) - 1, len(arrival) - 1)])
    return out


@dataclass
class SwarmMix:
    """Roles of the simulated nodes and the encoded size of each one's announce and status."""

    roles: list[str]  # per node: "serve", "train" or "relay"
    announce_bytes: dict[str, int]
    status_bytes: dict[str, int]


def _announce(peer: str, role: str) -> PeerAnnounce:
    return PeerAnnounce(peer_id=peer, addrs=[], version="sim", timestamp_ms=1, roles=[role] if role != "relay" else [],
                        model_id="sim-model" if role == "serve" else "", seq=1)  # fmt: skip


def _status(peer: str, role: str, seq: int, period_s: float) -> PeerStatus:
    load = Load(running=1, predicted_ttft_ms=100.0, decode_tok_s=50.0) if role == "serve" else None
    training = TrainingState(round=seq, step=seq) if role == "train" else None
    return PeerStatus(peer_id=peer, seq=seq, timestamp_ms=seq, period_s=period_s, load=load, training=training)


def steady_state(net: Network, mix: SwarmMix, params: GossipParams, hot: int, window_s: float, seed: int) -> dict:
    """Run every node's status and announce refreshes for ``window_s`` of virtual time, hot nodes observing what
    reaches them with the real Membership; returns bytes per node per second and the hot nodes' view."""
    rng = random.Random(seed)
    n = net.n
    loop = EventLoop()
    ids = [f"sim-{i:06d}" for i in range(n)]
    hot_nodes = rng.sample(range(n), min(hot, n))
    tables = {h: Membership(ids[h], params.peer_timeout_s, loop.clock, max_peers=params.max_peers,
                            max_per_model=params.max_peers_per_model) for h in hot_nodes}  # fmt: skip
    for h, table in tables.items():  # steady state: each node has heard every peer's id once
        for i in range(n):
            if i != h:
                table.size.add(ids[i], 0.0)
    n_est = statistics.mean(t.size.estimate() for t in tables.values())
    status_p = status_period_s(n_est, params.heartbeat_s, params.status_budget_msgs_s)
    announce_p = announce_period_s(n_est, params.heartbeat_s, params.status_budget_msgs_s)
    dist = {h: net.arrival_s(h, 300) for h in hot_nodes}  # hop paths are symmetric; one size for all
    received = {h: 0 for h in hot_nodes}
    seqs = [0] * n

    def deliver(h: int, origin: int, full: bool) -> None:
        role = mix.roles[origin]
        if full:
            received[h] += mix.announce_bytes[role]
            tables[h].observe(_announce(ids[origin], role))
        else:
            received[h] += mix.status_bytes[role]
            seqs[origin] += 1
            tables[h].observe_status(_status(ids[origin], role, seqs[origin], status_p))

    every = max(round(announce_p / status_p), 1)

    def publish(origin: int, phase: float, first_full: int) -> None:
        """As swarm/runtime/node.py's heartbeat: one message per status period, the full announce in place of the
        status every `every` periods."""
        t, k = phase, first_full
        while t < window_s:
            full = k % every == 0
            for h in hot_nodes:
                arrive = t + (0.0 if h == origin else dist[h][origin])
                if arrive < window_s:
                    loop.at(arrive, lambda h=h, o=origin, f=full: deliver(h, o, f))
            t += status_p
            k += 1

    for origin in range(n):
        publish(origin, rng.uniform(0, status_p), rng.randrange(every))
    loop.run_until(window_s)
    per_node = [received[h] / window_s for h in hot_nodes]
    delivered_msgs_s = n / status_p
    wire = statistics.mean(per_node) * max(net.mean_degree() - 1, 1.0)
    wire += GOSSIP_DEGREE * delivered_msgs_s * IHAVE_WINDOW * IHAVE_ID_BYTES / GOSSIP_HEARTBEAT_S
    return {
        "gossip_bytes_per_node_s": statistics.mean(per_node),
        "wire_bytes_per_node_s_est": wire,
        "messages_per_node_s": delivered_msgs_s,
        "status_period_s": status_p,
        "announce_period_s": announce_p,
        "size_estimate_mean": n_est,
        "table_entries_mean": statistics.mean(len(t) for t in tables.values()),
        "table_bound": params.max_peers,
        "hot_nodes": len(hot_nodes),
        "events": loop.events,
    }
