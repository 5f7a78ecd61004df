"""`swarm bench sim`: the swarm simulated at N = 10 ... 10,000 nodes, running the project's own membership, gossip
period, route sampling and ranking, and NoLoCo grouping code on a virtual clock (swarm/sim/*), and the N = 32 point
set against a real 32-process run (`swarm bench scale`, its JSON read here).

Per N: seconds for a joining node to be known by 99% of the swarm, gossip bytes per node per second, routing
goodput (SLO attainment) of TTFT routing over sampled peers against random and least-loaded routing at a fixed load
fraction, and NoLoCo group formation under churn. The N = 32 comparison runs the "loopback" network (one machine)
calibrated by two figures the real run measured on itself (a joiner's handshake time and one gossip hop), with the
real run's role mix and mean message size; everything else (mesh, heartbeats, periods, hops) is the model's.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

from protocols import Hardware, Load, PeerAnnounce, RLState, TrainingState, encode
from protocols.status import PeerStatus
from swarm.sim.gossip import GossipParams, SwarmMix, join_times, steady_state
from swarm.sim.network import WAN, NetProfile, Network, loopback
from swarm.sim.routing import routing_goodput
from swarm.sim.training import group_success

STEPS_PER_SIZE = 4
ROLE_MIX = (("serve", 0.25), ("train", 0.25), ("relay", 0.5))
HOT_NODES = 64
WINDOW_S = 60.0
LOAD_FRACTION = 0.7
ROUTE_SAMPLE = 4  # NetworkConfig.route_sample
SESSION_MEAN_S = 3600.0  # churn: mean time a node stays
ROUND_S = 60.0  # NoLoCo outer round
PEER_ID = "12D3KooW" + "A" * 44
ADDR = f"/ip4/203.0.113.17/tcp/40123/p2p/{PEER_ID}"


def message_sizes() -> tuple[dict[str, int], dict[str, int]]:
    """Encoded bytes of a typical announce and status of each role (the real messages, realistic contents)."""
    hw = Hardware(device="cuda", device_name="NVIDIA GeForce RTX 4090", memory_bytes=24 * 2**30, cpu_cores=16)
    load = Load(running=3, waiting=1, predicted_ttft_ms=182.5, decode_tok_s=412.0, free_kv_tokens=120000,
                prefill_tok_s=5300.0)  # fmt: skip
    training = TrainingState(round=12, step=1200, loss=3.21)
    announce, status = {}, {}
    for role in ("serve", "train", "relay"):
        a = PeerAnnounce(peer_id=PEER_ID, addrs=[ADDR, ADDR.replace("203.0.113.17", "10.0.0.17")], version="0.1.0",
                         timestamp_ms=1_760_000_000_000, roles=[role] if role != "relay" else [], hardware=hw,
                         seq=123)  # fmt: skip
        if role == "serve":
            a.model_id, a.model_hash, a.load = "swarm-embedded-default-seed0", "ab" * 32, load
        if role == "train":
            a.training, a.hivemind_addrs = training, [ADDR.replace("40123", "40124")]
            a.rl = RLState(round=4, mean_reward=0.5)
        announce[role] = len(encode(a))
        s = PeerStatus(peer_id=PEER_ID, seq=124, timestamp_ms=1_760_000_002_000, period_s=2.0)
        s.load, s.training = (load if role == "serve" else None), (training if role == "train" else None)
        status[role] = len(encode(s))
    return announce, status


def _roles(n: int, mix: tuple[tuple[str, float], ...], seed: int) -> list[str]:
    roles: list[str] = []
    for role, share in mix:
        roles += [role] * round(share * n)
    roles = (roles + ["relay"] * n)[:n]
    random.Random(seed).shuffle(roles)
    return roles


def run_size(n: int, profile: NetProfile, mix: SwarmMix, seed: int, joins: int, progress,  # type: ignore[no-untyped-def]
             params: GossipParams | None = None) -> dict[str, Any]:  # fmt: skip
    """Every figure for one swarm size."""
    params = params or GossipParams()
    progress(f"N={n}: mesh and joins ({profile.name})")
    net = Network(n, profile, seed)
    mean_announce = int(statistics.mean(mix.announce_bytes.values()))
    times = join_times(net, joins, mean_announce, random.Random(seed + 1))
    progress(f"N={n}: gossip steady state, {min(HOT_NODES, n)} nodes with full state")
    gossip = steady_state(net, mix, params, HOT_NODES, WINDOW_S, seed + 2)
    progress(f"N={n}: routing")
    servers = min(max(mix.roles.count("serve"), 3), params.max_peers_per_model)
    rtt = 2 * statistics.mean(net.latency_s(0, v) for v in range(min(n, 64)))
    routing = routing_goodput(servers, LOAD_FRACTION, max(3000, 20 * servers), ROUTE_SAMPLE, rtt, seed + 3)
    progress(f"N={n}: NoLoCo groups under churn")
    training = group_success(n, 8, ROUND_S, SESSION_MEAN_S, gossip["status_period_s"], statistics.mean(times),
                             params.max_peers, seed + 4)  # fmt: skip
    return {
        "nodes": n,
        "network": profile.name,
        "convergence_s": statistics.mean(times),
        "convergence_p90_s": sorted(times)[int(0.9 * (len(times) - 1))],
        "joins": len(times),
        "mesh_mean_degree": net.mean_degree(),
        **gossip,
        "routing": routing,
        "noloco": training,
    }


def _real_point(real: dict[str, Any], seed: int, progress) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    """The simulator at the real run's size, role mix, message size and loopback calibration."""
    res, cfg = real.get("results", {}), real.get("config", {})
    cal = res.get("calibration", {})
    if not cal.get("first_hop_s") or not cal.get("handshake_s") or not res.get("convergence_s"):
        return None
    n = int(cfg["nodes"])
    relay_s = max(cal["first_hop_s"] - 0.0001, 0.0)
    profile = loopback(relay_s=relay_s, handshake_s=max(cal["handshake_s"] - relay_s, 0.0))
    size = int(res["gossip_message_bytes_mean"])
    roles = ["serve"] * int(cfg["serving"]) + ["relay"] * (n - int(cfg["serving"]))
    mix = SwarmMix(roles, {"serve": size, "relay": size}, {"serve": size, "relay": size})
    budget = float(cfg.get("status_budget_msgs_s", GossipParams.status_budget_msgs_s))
    params = GossipParams(heartbeat_s=float(cfg["heartbeat_s"]), peer_timeout_s=float(cfg["peer_timeout_s"]),
                          status_budget_msgs_s=budget)  # fmt: skip
    point = run_size(n, profile, mix, seed, joins=200, progress=progress, params=params)
    return {"sim": point, "real": {"convergence_s": res["convergence_s"],
                                   "gossip_bytes_per_node_s": res["gossip_bytes_per_node_s"]},
            "calibration": {"relay_s": relay_s, "handshake_s": profile.handshake_s, "message_bytes": size}}  # fmt: skip


def run_sim_bench(sizes: list[int], real: dict[str, Any] | None, seed: int = 0, progress=print) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    announce, status = message_sizes()
    by_n = {}
    for n in sizes:
        mix = SwarmMix(_roles(n, ROLE_MIX, seed), announce, status)
        by_n[str(n)] = run_size(n, WAN, mix, seed, joins=20 if n <= 1000 else 10, progress=progress)
    ratios: dict[str, Any] = {
        "min_goodput_routing_vs_random": min(p["routing"]["goodput_routing_vs_random"] for p in by_n.values()),
        "min_goodput_routing_vs_least_loaded": min(
            p["routing"]["goodput_routing_vs_least_loaded"] for p in by_n.values()
        ),
        "min_noloco_group_success": min(p["noloco"]["success"] for p in by_n.values()),
    }
    if "100" in by_n and "10000" in by_n:
        small, big = by_n["100"], by_n["10000"]
        ratios["bytes_per_node_growth_100_to_10000"] = big["gossip_bytes_per_node_s"] / small["gossip_bytes_per_node_s"]
        ratios["convergence_growth_100_to_10000"] = big["convergence_s"] / small["convergence_s"]
    comparison = _real_point(real, seed, progress) if real is not None else None
    if comparison is None and real is not None:
        comparison = {"skipped": "the real run measured no convergence time (its swarm did not converge) or no "
                                 "calibration, so there is nothing to compare the N = 32 point with"}  # fmt: skip
    elif comparison is not None:
        sim, actual = comparison["sim"], comparison["real"]
        ratios["sim_vs_real_convergence_32"] = sim["convergence_s"] / actual["convergence_s"]
        ratios["sim_vs_real_bytes_32"] = sim["gossip_bytes_per_node_s"] / actual["gossip_bytes_per_node_s"]
    return {
        "bench": "sim",
        "config": {
            "sizes": sizes,
            "seed": seed,
            "role_mix": dict(ROLE_MIX),
            "hot_nodes": HOT_NODES,
            "window_s": WINDOW_S,
            "load_fraction": LOAD_FRACTION,
            "route_sample": ROUTE_SAMPLE,
            "session_mean_s": SESSION_MEAN_S,
            "round_s": ROUND_S,
            "network": vars(WAN),
            "announce_bytes": announce,
            "status_bytes": status,
            "gossip": vars(GossipParams()),
        },
        "results": {"by_n": by_n, "real_32": comparison},
        "ratios": ratios,
    }


def plot_sim(result: dict[str, Any], path: Path) -> None:
    """Four panels against N (log scale): convergence, bytes per node, routing goodput ratios, NoLoCo success."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_n = result["results"]["by_n"]
    ns = sorted(int(n) for n in by_n)
    pts = [by_n[str(n)] for n in ns]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    real = result["results"].get("real_32")
    real = real if real and "sim" in real else None
    axes[0].plot(ns, [p["convergence_s"] for p in pts], "o-", label="sim (WAN)")
    axes[0].set_ylabel("s to be known by 99%")
    axes[1].plot(ns, [p["gossip_bytes_per_node_s"] / 1e3 for p in pts], "o-", label="delivered (node counter)")
    axes[1].plot(ns, [p["wire_bytes_per_node_s_est"] / 1e3 for p in pts], "s--", label="on the wire (est.)")
    old_announce = statistics.mean(result["config"]["announce_bytes"].values())
    axes[1].plot(ns, [n * old_announce / 2.0 / 1e3 for n in ns], ":", color="grey", label="before: full announce / 2 s")
    axes[1].set_ylabel("gossip kB/s per node")
    if real:
        axes[0].plot([32], [real["real"]["convergence_s"]], "r*", ms=12, label="real, 32 processes")
        axes[0].plot([32], [real["sim"]["convergence_s"]], "kx", ms=9, label="sim, loopback 32")
        axes[1].plot([32], [real["real"]["gossip_bytes_per_node_s"] / 1e3], "r*", ms=12, label="real, 32")
        axes[1].plot([32], [real["sim"]["gossip_bytes_per_node_s"] / 1e3], "kx", ms=9, label="sim, loopback 32")
    axes[2].plot(ns, [p["routing"]["goodput_routing_vs_random"] for p in pts], "o-", label="vs random")
    axes[2].plot(ns, [p["routing"]["goodput_routing_vs_least_loaded"] for p in pts], "s-", label="vs least loaded")
    axes[2].axhline(1.3, color="grey", ls=":")
    axes[2].set_ylabel("routing goodput ratio")
    axes[3].plot(ns, [p["noloco"]["success"] for p in pts], "o-", label="mean")
    axes[3].plot(ns, [p["noloco"]["worst_round"] for p in pts], "s--", label="worst round")
    axes[3].set_ylabel("NoLoCo peers grouped")
    axes[3].set_ylim(0, 1.05)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("nodes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
