"""The simulator's parts at toy sizes: the virtual clock's order, gossip arrival over a known mesh, hot nodes'
real tables fed by the steady state, routing over real rank_peers, NoLoCo keys equal to the real call, and the
bench's JSON with its ratios against a real run's figures."""

from __future__ import annotations

import json
import random

import pytest

from swarm.sim.bench import message_sizes, run_sim_bench
from swarm.sim.clock import EventLoop
from swarm.sim.gossip import GossipParams, SwarmMix, join_times, steady_state
from swarm.sim.network import WAN, Network, loopback
from swarm.sim.routing import make_servers, routing_goodput
from swarm.sim.training import group_success


def test_events_run_in_time_order_and_ties_in_scheduling_order() -> None:
    loop, seen = EventLoop(), []
    for t, tag in ((2.0, "c"), (1.0, "a"), (1.0, "b"), (5.0, "late")):
        loop.at(t, lambda tag=tag: seen.append((loop.now, tag)))
    loop.run_until(3.0)
    assert seen == [(1.0, "a"), (1.0, "b"), (2.0, "c")] and loop.now == 3.0


def test_arrival_over_a_line_is_the_sum_of_its_hops() -> None:
    net = Network(4, loopback(relay_s=0.01, handshake_s=0.0), seed=0)
    net.adj = [[1], [0, 2], [1, 3], [2]]
    net._links = [[(v, net.latency_s(u, v), 1e10) for v in vs] for u, vs in enumerate(net.adj)]
    hop = 0.0001 + 0.01 + 8 * 100 / 1e10
    assert net.arrival_s(0, 100) == pytest.approx([0.0, hop, 2 * hop, 3 * hop])


def test_the_mesh_has_gossip_degree_and_joins_announce_at_the_poll_after_their_first_link() -> None:
    net = Network(300, WAN, seed=1)
    assert 4.5 <= net.mean_degree() <= 7
    assert all(len(a) >= 1 for a in net.adj)
    times = join_times(net, 5, 500, random.Random(2))
    # the first link grafts on the bootstrap peer's subscription; the announce leaves at the node's next 0.25 s poll
    assert all(0.25 <= t < 3.0 for t in times)
    slow = Network(30, loopback(relay_s=0.01, handshake_s=0.3), seed=1)
    assert all(0.5 <= t < 0.5 + 0.2 for t in join_times(slow, 5, 500, random.Random(2)))


def test_steady_state_bytes_follow_the_period_policy() -> None:
    announce, status = message_sizes()
    n = 200
    mix = SwarmMix(["serve"] * n, announce, status)
    out = steady_state(Network(n, WAN, seed=3), mix, GossipParams(), hot=8, window_s=40.0, seed=4)
    assert out["status_period_s"] == pytest.approx(n / 25.0, rel=0.1)
    # one message per node per status period, the full announce in place of every 5th status (as a node sends)
    every = out["announce_period_s"] / out["status_period_s"]
    expected = n / out["status_period_s"] * ((every - 1) * status["serve"] + announce["serve"]) / every
    assert out["gossip_bytes_per_node_s"] == pytest.approx(expected, rel=0.1)
    assert out["messages_per_node_s"] == pytest.approx(n / out["status_period_s"])
    assert 0 < out["table_entries_mean"] <= n


def test_routing_by_sampled_ttft_beats_random_over_mixed_speeds() -> None:
    assert sorted({round(1 / s.latency.slowdown) for s in make_servers(10)}) == [1, 20, 100]
    out = routing_goodput(10, 0.7, 2000, d=4, rtt_s=0.02, seed=5)
    assert out["attainment"]["ttft"] >= out["attainment"]["random"]
    assert out["goodput_routing_vs_random"] > 1.0


def test_noloco_groups_form_without_churn_and_the_shortcut_matches_the_real_call() -> None:
    out = group_success(200, rounds=3, round_s=60, session_mean_s=1e12, status_period_s=2.0, join_known_s=1.0,
                        max_peers=2048, seed=6)  # fmt: skip
    assert out["success"] > 0.95


def test_sim_bench_writes_its_ratios_against_a_real_run() -> None:
    real = {"config": {"nodes": 12, "serving": 3, "heartbeat_s": 4.0, "peer_timeout_s": 20.0,
                       "status_budget_msgs_s": 2.0},
            "results": {"convergence_s": 0.5, "gossip_bytes_per_node_s": 3000.0, "gossip_message_bytes_mean": 300.0,
                        "calibration": {"handshake_s": 0.05, "first_hop_s": 0.004}}}  # fmt: skip
    result = run_sim_bench([10, 30], real, seed=0, progress=lambda _m: None)
    json.dumps(result)
    assert set(result["results"]["by_n"]) == {"10", "30"}
    ratios = result["ratios"]
    assert ratios["sim_vs_real_convergence_32"] > 0 and ratios["sim_vs_real_bytes_32"] > 0
    assert result["results"]["real_32"]["sim"]["nodes"] == 12
    assert result["results"]["real_32"]["sim"]["status_period_s"] == pytest.approx(6.0)  # the real run's budget
