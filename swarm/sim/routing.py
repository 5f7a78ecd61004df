"""Routing at scale: clients route Poisson requests over serving peers of mixed speed with the project's real
`sample_candidates` + `rank_peers` + `RouteState` (virtual clock), against random and least-loaded routing.

Servers are queue models driven by the real `LatencyModel` (serving/latency.py): a request's prefill takes
`prefill_s` of the server's profile times its slowdown, prefills run one after another, and each request then
occupies the server for its decode tokens at the profile's per-token cost. A server reports the Load a real engine
would (`predicted_ttft_ms` of a probe-length prompt behind its queue, its prefill rate), asked on demand by the
sampled route (the load as of one round trip before the decision). A client's table holds at most
`max_peers_per_model` serving peers, so one pool of that size stands for the swarm: the rest of the swarm's
servers are other clients' pools, statistically the same. Knows requests and seconds, not tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from protocols import Load, PeerAnnounce
from protocols.messages import LOAD_PROBE_PROMPT_TOKENS
from serving.latency import LatencyModel
from swarm.gateway.route_sample import sample_candidates
from swarm.gateway.routing import RouteState, rank_peers
from swarm.sim.clock import EventLoop

# The step-time profile of the embedded default model on this machine's CPU, 2 threads (serving/latency.py
# coefficients as `swarm bench serve` profiled them); devices faster by a factor divide it.
CPU_PROFILE = [0.0011141, 0.0151655, 0.0204983, 0.0192297]
SPEED_MIX = ((1.0, 0.6), (20.0, 0.3), (100.0, 0.1))  # (speed vs one CPU, share of servers): CPU, small, big GPU
PROMPT_TOKENS = (32, 512)
NEW_TOKENS = (16, 128)
CHUNK = 512
MODEL = "sim-model"


@dataclass
class Server:
    peer_id: str
    latency: LatencyModel
    prefill_free_at: float = 0.0  # when the prefill queue drains
    decoding: list[float] = field(default_factory=list)  # end times of requests decoding

    def __post_init__(self) -> None:
        self._per_token_s = self.latency.step_s([(1, 256)]) - self.latency.step_s([])
        self._probe_s = self.prefill_s(LOAD_PROBE_PROMPT_TOKENS)

    def prefill_s(self, tokens: int) -> float:
        return self.latency.prefill_s([(tokens, 0)], CHUNK, [])

    def per_token_s(self) -> float:
        return self._per_token_s

    def load(self, now: float) -> Load:
        self.decoding = [t for t in self.decoding if t > now]
        queue_s = max(self.prefill_free_at - now, 0.0)
        probe_s = self._probe_s
        return Load(
            running=len(self.decoding),
            waiting=0,
            predicted_ttft_ms=1000.0 * (queue_s + probe_s),
            decode_tok_s=1.0 / max(self.per_token_s(), 1e-9),
            prefill_tok_s=LOAD_PROBE_PROMPT_TOKENS / probe_s,
        )

    def announce(self, now: float) -> PeerAnnounce:
        return PeerAnnounce(peer_id=self.peer_id, addrs=[], version="sim", timestamp_ms=0, roles=["serve"],
                            model_id=MODEL, load=self.load(now))  # fmt: skip

    def mean_service_s(self) -> float:
        return self.prefill_s(sum(PROMPT_TOKENS) // 2) + (sum(NEW_TOKENS) / 2) * self.per_token_s()


def make_servers(count: int) -> list[Server]:
    """``count`` servers, speeds by SPEED_MIX in proportion (stratified: every class present once count >= 3)."""
    speeds: list[float] = []
    for speed, share in SPEED_MIX:
        speeds += [speed] * max(1, round(share * count))
    speeds = sorted(speeds)[:count] if len(speeds) >= count else speeds + [1.0] * (count - len(speeds))
    return [Server(f"server-{i:05d}", LatencyModel(list(CPU_PROFILE), slowdown=1.0 / s)) for i, s in enumerate(speeds)]


@dataclass
class Request:
    arrival_s: float
    client: int
    prompt_tokens: int
    new_tokens: int
    counted: bool = True  # False during the warm-up (the first quarter): queues start empty


def make_requests(count: int, rate: float, clients: int, seed: int) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    lo, hi = PROMPT_TOKENS
    for i in range(count):
        t += rng.expovariate(rate)
        prompt = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        out.append(Request(t, rng.randrange(clients), prompt, rng.randint(*NEW_TOKENS), counted=i >= count // 4))
    return out


def run_policy(servers: list[Server], requests: list[Request], policy: str, ttft_target_s: float, d: int,
               rtt_s: float, seed: int) -> float:  # fmt: skip
    """SLO attainment (share of requests whose first token comes within the target) under ``policy``."""
    loop = EventLoop()
    rng = random.Random(seed)
    for s in servers:
        s.prefill_free_at, s.decoding = 0.0, []
    by_id = {s.peer_id: s for s in servers}
    states = [RouteState(clock=loop.clock) for _ in range(max(r.client for r in requests) + 1)]
    met = [0]

    def arrive(req: Request) -> None:
        state = states[req.client]
        now = loop.now
        if policy == "ttft":  # draw d, ask their loads (as of one round trip ago), rank them
            sample = sample_candidates(static_views, MODEL, d, rng)
            fresh = [by_id[a.peer_id].announce(now - rtt_s) for a in sample]
            ranked = rank_peers(fresh, MODEL, state, ttft_ms=1000 * ttft_target_s, prompt_tokens=req.prompt_tokens)
        else:
            ranked = rank_peers(static_views, MODEL, state, policy=policy)
        server = by_id[ranked[0].peer_id]
        start = max(now + rtt_s / 2, server.prefill_free_at)
        first = start + server.prefill_s(req.prompt_tokens)
        server.prefill_free_at = first
        end = first + req.new_tokens * server.per_token_s()
        server.decoding.append(end)
        peer = server.peer_id
        state.awaiting_first_token[peer] = state.awaiting_first_token.get(peer, 0) + 1
        state.outstanding[peer] = state.outstanding.get(peer, 0) + 1
        if req.counted and first + rtt_s / 2 - req.arrival_s <= ttft_target_s:
            met[0] += 1
        loop.at(first, lambda: state.awaiting_first_token.__setitem__(peer, state.awaiting_first_token[peer] - 1))
        loop.at(end, lambda: state.outstanding.__setitem__(peer, state.outstanding[peer] - 1))

    static_views = [s.announce(0.0) for s in servers]
    for req in requests:
        loop.at(req.arrival_s, lambda r=req: arrive(r))
    loop.run()
    return met[0] / max(sum(r.counted for r in requests), 1)


def routing_goodput(num_servers: int, load_fraction: float, requests: int, d: int, rtt_s: float, seed: int) -> dict:
    """Attainment of each policy on the same requests at ``load_fraction`` of the pool's capacity."""
    servers = make_servers(num_servers)
    capacity = sum(1.0 / s.mean_service_s() for s in servers)
    cpu = Server("ref", LatencyModel(list(CPU_PROFILE)))
    # a round trip plus 5x a CPU's isolated prefill of a mean prompt: a CPU peer can meet it when not queued
    ttft_target_s = rtt_s + 5.0 * cpu.prefill_s(sum(PROMPT_TOKENS) // 2)
    reqs = make_requests(requests, load_fraction * capacity, clients=16, seed=seed)
    att = {p: run_policy(servers, reqs, p, ttft_target_s, d, rtt_s, seed) for p in ("ttft", "random", "least_loaded")}
    return {
        "servers": num_servers,
        "capacity_req_s": capacity,
        "ttft_target_s": ttft_target_s,
        "attainment": att,
        "goodput_routing_vs_random": att["ttft"] / max(att["random"], 1e-9),
        "goodput_routing_vs_least_loaded": att["ttft"] / max(att["least_loaded"], 1e-9),
    }
