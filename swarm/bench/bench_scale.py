"""`swarm bench scale --nodes 32`: real `swarm join` processes on 127.0.0.1, measuring what the simulator predicts
(swarm/sim/bench.py): how long a joining node takes to be known by 99% of the swarm, gossip bytes per node per
second from the nodes' own counters, CPU per node, and how soon every node knows 3 serving peers.

Serving nodes run the embedded `tiny` model on one thread; the rest relay (no role); every process is held to one
thread of numerical work, and nodes start one at a time, each once the one before listens. The swarm's gossip is
sized by its own knob: `network.status_budget_msgs_s` (the statuses a node expects to receive per second; the status
period is N / budget past the heartbeat) is set for 32 processes to share 2 cores, as a deployment sets it for what
its nodes can spend. Times come from the nodes' own log lines (one clock: this machine's): "host up" (the
libp2p host listens), "linked to bootstrap peer" (a joiner's first link), "announcing to a gossip mesh" (its join
announce), "peer joined: <id> (<roles>...)" and "peer left".
Knows processes, logs and /metrics text.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from swarm.bench.local_swarm import LocalPeer, stop_all

JOINERS = 4
WINDOW_S = 48.0  # three status periods at N = 32: each node's count of messages is a few, not one or two
JOIN_TIMEOUT_S = 30.0
# Slower than the defaults (2 s, 25 statuses/s): 32 py-libp2p processes relaying each other's messages share 2 cores.
HEARTBEAT_S = 4.0
PEER_TIMEOUT_S = 20.0
STATUS_BUDGET_MSGS_S = 2.0  # status period max(4 s, N / 2): 16 s at N = 32
# One thread of numerical work per process; yamux credits its window in half-window batches (go-yamux's rule)
# instead of one WINDOW_UPDATE frame per read: about 10% less CPU per gossip message on loopback.
NODE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "PY_YAMUX_RELEASE_ON_READ": "0"}  # fmt: skip
SERVE_ARGS = ["--roles", "serve", "--model", "tiny", "--set", "serving.num_threads=1",
              "--set", "serving.max_batch_tokens=256", "--set", "serving.kv_cache_bytes=8000000"]  # fmt: skip
RELAY_ARGS = ["--roles", ""]
HOST_UP = "host up: joining the swarm"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def _first(peer: LocalPeer, needle: str) -> float | None:
    for line in peer.log_path.read_text(errors="replace").splitlines():
        if needle in line:
            return _stamp(line)
    return None


def _joined(peer: LocalPeer) -> dict[str, tuple[float, str]]:
    """peer id -> (when this node first had it in its table, its roles), from "peer joined:" lines."""
    out: dict[str, tuple[float, str]] = {}
    for line in peer.log_path.read_text(errors="replace").splitlines():
        i = line.find("peer joined: ")
        t = _stamp(line)
        if i < 0 or t is None:
            continue
        rest = line[i + len("peer joined: ") :]
        pid, _, roles = rest.partition(" ")
        out.setdefault(pid, (t, roles))
    return out


def _gossip_bytes(peer: LocalPeer) -> tuple[float, float]:
    """(gossip bytes in, gossip messages in) from the node's /metrics."""
    text = httpx.get(f"{peer.http}/metrics", timeout=10).text
    nbytes = msgs = 0.0
    for line in text.splitlines():
        if line.startswith('swarm_bytes_in_total{channel="gossip"}'):
            nbytes = float(line.split()[-1])
        elif line.startswith('swarm_messages_in_total{kind="gossip:'):
            msgs += float(line.split()[-1])
    return nbytes, msgs


def _count(peer: LocalPeer, needle: str) -> int:
    return sum(needle in line for line in peer.log_path.read_text(errors="replace").splitlines())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait(predicate, timeout_s: float, interval_s: float = 0.5) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def _start(workdir: Path, name: str, args: list[str], earlier: list[LocalPeer], rng: random.Random) -> LocalPeer:
    ready = [p for p in earlier if p.info]
    boots = rng.sample(ready, min(2, len(ready)))
    bootstrap = [a for b in boots for a in ("--peer", b.addr)]
    timing = ["--heartbeat-s", str(HEARTBEAT_S), "--peer-timeout-s", str(PEER_TIMEOUT_S),
              "--set", f"network.status_budget_msgs_s={STATUS_BUDGET_MSGS_S}"]  # fmt: skip
    return LocalPeer(workdir, name, [*args, *bootstrap, *timing], env=NODE_ENV)


def _join_one(workdir: Path, name: str, peers: list[LocalPeer], rng: random.Random) -> dict[str, Any]:
    """Start one relay node and time it: listening -> known by 99% of the others."""
    others = list(peers)
    joiner = _start(workdir, name, RELAY_ARGS, peers, rng)
    peers.append(joiner)  # stopped with the rest whatever happens next
    joiner.wait_ready(300)
    need = int(0.99 * len(others) + 0.999)
    _wait(lambda: sum(joiner.peer_id in _joined(p) for p in others) >= need, JOIN_TIMEOUT_S, 0.25)
    _wait(lambda: _first(joiner, "linked to bootstrap") and _first(joiner, "announcing to a gossip mesh"), 10.0)
    listen = _first(joiner, HOST_UP)
    known = sorted(_joined(p)[joiner.peer_id][0] for p in others if joiner.peer_id in _joined(p))
    published = _first(joiner, "announcing to a gossip mesh")
    connected = _first(joiner, "linked to bootstrap peer")
    sample = {
        "name": name,
        "known_by": len(known),
        "of": len(others),
        "known_99_s": known[need - 1] - listen if len(known) >= need and listen else None,
        "connected_s": connected - listen if connected and listen else None,
        "published_s": published - listen if published and listen else None,
        "first_hop_s": known[0] - published if known and published else None,
    }
    return sample


def _serving_found(peers: list[LocalPeer], serving: set[str]) -> list[float]:
    """Per node: seconds from when it could first know 3 serving peers (it listens and 3 others do) to when it did."""
    listen = {p.peer_id: _first(p, HOST_UP) or 0.0 for p in peers}
    out = []
    for p in peers:
        others = sorted(listen[s] for s in serving if s != p.peer_id)
        if len(others) < 3:
            continue
        ref = max(listen[p.peer_id], others[2])
        seen = sorted(t for pid, (t, _) in _joined(p).items() if pid in serving)
        if len(seen) >= 3:
            out.append(max(seen[2] - ref, 0.0))
    return out


def run_scale_bench(num_nodes: int = 32, num_serving: int = 5, seed: int = 0, progress=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="swarm-scale-"))
    base = num_nodes - JOINERS
    peers: list[LocalPeer] = []
    try:
        for i in range(base):
            serve = i < num_serving
            progress(f"starting node {i + 1}/{base}" + (" (serve, tiny)" if serve else ""))
            peers.append(_start(workdir, f"n{i:02d}", SERVE_ARGS if serve else RELAY_ARGS, peers, rng))
            peers[-1].wait_ready(240)  # one start-up (imports, model load, handshakes) at a time
        serving = {p.peer_id for p in peers[:num_serving]}
        progress("waiting for every node to know every other")
        converged = _wait(lambda: all(len(p.peers()) >= base for p in peers), 180)
        joins = []
        for j in range(JOINERS):
            progress(f"joiner {j + 1}/{JOINERS}")
            joins.append(_join_one(workdir, f"j{j}", peers, rng))
        # The steady state of the whole swarm (joiners included), as the simulator's N = num_nodes point has it.
        progress(f"measuring gossip bytes and CPU of all {num_nodes} for {WINDOW_S:.0f} s")
        converged_all = _wait(lambda: all(len(p.peers()) >= num_nodes for p in peers), 120)
        before = [(_gossip_bytes(p), _cpu_s(p.proc.pid)) for p in peers]
        t0 = time.monotonic()
        time.sleep(WINDOW_S)
        after = [(_gossip_bytes(p), _cpu_s(p.proc.pid)) for p in peers]
        window = time.monotonic() - t0
        rates = [(a[0][0] - b[0][0]) / window for a, b in zip(after, before, strict=True)]
        msgs = [(a[0][1] - b[0][1]) / window for a, b in zip(after, before, strict=True)]
        cpu = [(a[1] - b[1]) / window for a, b in zip(after, before, strict=True)]
        found = _serving_found(peers, serving)
        counts = [sum("serve" in r["roles"] for r in p.peers() if not r["self"]) for p in peers]
        left = [_count(p, "peer left: ") for p in peers]
        dropped = [_count(p, "exceeded limit") + _count(p, "is behind; dropping") for p in peers]
    finally:
        stop_all(peers)
    known = [j["known_99_s"] for j in joins if j["known_99_s"] is not None]
    return {
        "bench": "scale",
        "config": {
            "nodes": num_nodes,
            "serving": num_serving,
            "relays": num_nodes - num_serving,
            "joiners": JOINERS,
            "heartbeat_s": HEARTBEAT_S,
            "peer_timeout_s": PEER_TIMEOUT_S,
            "status_budget_msgs_s": STATUS_BUDGET_MSGS_S,
            "node_env": NODE_ENV,
            "window_s": WINDOW_S,
            "seed": seed,
            "serving_model": "tiny",
            "workdir": str(workdir),
        },
        "results": {
            "converged_before_joins": converged,
            "converged_before_window": converged_all,
            "convergence_s": statistics.mean(known) if known else None,  # over the joins known by 99% in time
            "joins_known_by_99": len(known),
            "joins": joins,
            "gossip_bytes_per_node_s": statistics.mean(rates),
            "gossip_messages_per_node_s": statistics.mean(msgs),
            "gossip_message_bytes_mean": sum(rates) / max(sum(msgs), 1e-9),
            "cpu_per_node": {
                "mean": statistics.mean(cpu),
                "serving": statistics.mean(cpu[:num_serving]),
                "relay": statistics.mean(cpu[num_serving:]),
            },
            "min_serving_peers_found": min(counts),
            "serving_peers_found_s": max(found) if found else None,  # over the nodes that found 3
            "nodes_finding_3_serving_peers": len(found),
            "serving_peers_known_at_end": {"min": min(counts), "mean": statistics.mean(counts)},
            "peer_left_lines": sum(left),  # entries expired anywhere during the run (none of the nodes stopped)
            "gossip_drop_lines": sum(dropped),  # py-libp2p's pending-queue drops and the consumer's own
            "calibration": {
                "handshake_s": _median([j["connected_s"] for j in joins]),
                "first_hop_s": _median([j["first_hop_s"] for j in joins]),
            },
        },
        "ratios": {},
    }


def _median(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None
