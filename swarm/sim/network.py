"""The simulated network: where nodes are, how long a message takes between two of them, and the gossip mesh.

A seeded model: each node sits in one of a few regions (inter-region one-way latency from a fixed matrix, plus
per-link jitter) and has an uplink bandwidth drawn log-uniformly; a relayed message also costs the relay its
processing time (decode, signature check, validation, re-send). The "loopback" profile stands for N processes on
one machine: sub-millisecond links, relaying bounded by CPU. The mesh is gossipsub's: a random graph of mean
degree D, each node linked to at least D / 2 others. Knows numbers, not messages.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import numpy as np

# One-way latency between five regions, seconds (roughly: two US coasts, Europe, Asia, Oceania).
REGION_LATENCY_S = np.array([
    [0.005, 0.035, 0.045, 0.080, 0.090],
    [0.035, 0.005, 0.075, 0.060, 0.070],
    [0.045, 0.075, 0.005, 0.110, 0.140],
    [0.080, 0.060, 0.110, 0.005, 0.060],
    [0.090, 0.070, 0.140, 0.060, 0.005],
])  # fmt: skip
GOSSIP_DEGREE = 6  # gossipsub D (comms/host.py); D_lo 4, D_hi 12
GOSSIP_HEARTBEAT_S = 1.0  # gossipsub heartbeat: mesh upkeep and IHAVE gossip


@dataclass(frozen=True)
class NetProfile:
    """The parameters of one network: "wan" (the internet) or "loopback" (one machine)."""

    name: str
    region_scale: float  # multiplies REGION_LATENCY_S (0: no distance)
    base_latency_s: float  # added to every link
    jitter_s: float  # per-link uniform extra latency
    bandwidth_bps: tuple[float, float]  # uplink, drawn log-uniformly in this range
    relay_s: float  # processing per message per hop
    handshake_s: float  # TCP + noise + yamux + peer exchange for a joiner's first link, beyond round trips


WAN = NetProfile("wan", 1.0, 0.002, 0.010, (10e6, 1e9), 0.002, 0.030)


def loopback(relay_s: float, handshake_s: float) -> NetProfile:
    """One machine: links of 0.1 ms, relaying and handshakes at the CPU's pace (measured by the real bench)."""
    return NetProfile("loopback", 0.0, 0.0001, 0.0, (1e10, 1e10), relay_s, handshake_s)


class Network:
    """Node positions and bandwidths for ``n`` nodes, and the mesh graph; all drawn from ``seed``."""

    def __init__(self, n: int, profile: NetProfile, seed: int, degree: int = GOSSIP_DEGREE) -> None:
        self.n = n
        self.profile = profile
        rng = np.random.default_rng(seed)
        self.region = rng.integers(0, len(REGION_LATENCY_S), size=n)
        lo, hi = np.log(profile.bandwidth_bps[0]), np.log(profile.bandwidth_bps[1])
        self.bandwidth = np.exp(rng.uniform(lo, hi, size=n))
        self.adj = _mesh(n, degree, random.Random(seed))
        # per link: (neighbour, latency, slower uplink), as plain floats: Dijkstra runs in Python
        self._links = [[(v, self.latency_s(u, v), float(min(self.bandwidth[u], self.bandwidth[v]))) for v in vs]
                       for u, vs in enumerate(self.adj)]  # fmt: skip

    def latency_s(self, a: int, b: int) -> float:
        p = self.profile
        jitter = p.jitter_s * (((a * 7919 + b * 104729) % 1000) / 1000.0)  # fixed per link
        return p.base_latency_s + p.region_scale * float(REGION_LATENCY_S[self.region[a], self.region[b]]) + jitter

    def hop_s(self, a: int, b: int, size_bytes: int) -> float:
        """One gossip hop a -> b of a message: latency, transmission at the slower uplink, b's processing."""
        bw = min(self.bandwidth[a], self.bandwidth[b])
        return self.latency_s(a, b) + 8.0 * size_bytes / bw + self.profile.relay_s

    def arrival_s(self, source: int, size_bytes: int, extra: dict[int, list[int]] | None = None) -> list[float]:
        """First arrival of a message published by ``source`` at every node (gossip floods the mesh: Dijkstra over
        hop times). ``extra``: links of a node outside the mesh graph (a joiner's), both directions."""
        relay, bits = self.profile.relay_s, 8.0 * size_bytes
        dist = [float("inf")] * self.n
        dist[source] = 0.0
        heap = [(0.0, source)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist[u]:
                continue
            links = self._links[u]
            if extra is not None and u in extra:
                links = [(v, self.latency_s(u, v), float(min(self.bandwidth[u], self.bandwidth[v]))) for v in extra[u]]
            for v, lat, bw in links:
                nd = d + lat + bits / bw + relay
                if nd < dist[v]:
                    dist[v] = nd
                    heapq.heappush(heap, (nd, v))
        return dist

    def mean_degree(self) -> float:
        return float(np.mean([len(a) for a in self.adj]))


def _mesh(n: int, degree: int, rng: random.Random) -> list[list[int]]:
    """A random graph where each node links to degree / 2 others (mean degree ~ degree), connected in practice."""
    links: list[set[int]] = [set() for _ in range(n)]
    if n <= 1:
        return [[] for _ in range(n)]
    per_node = max(1, min(degree // 2, n - 1))
    for u in range(n):
        while len(links[u]) < per_node:
            v = rng.randrange(n)
            if v != u:
                links[u].add(v)
                links[v].add(u)
    order = list(range(n))  # a ring through a random order keeps the graph connected even at tiny n
    rng.shuffle(order)
    for i in range(n):
        a, b = order[i], order[(i + 1) % n]
        if a != b and len(links[a]) < degree and len(links[b]) < degree:
            links[a].add(b)
            links[b].add(a)
    return [sorted(s) for s in links]
