"""The routing bench end to end at toy size: real serving peers, the client, both policies, the JSON's shape."""

from __future__ import annotations

import json

import pytest

from serving.bench_workload import Mix
from swarm.bench.bench_swarm import POLICIES, run_swarm_bench


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("refusing_peers", [False, True])
def test_routing_bench_runs_both_policies_over_real_peers(refusing_peers: bool) -> None:
    toy = Mix("toy", 24, 0.3, (8, 48), 8, 0.2, (4, 12))
    result = run_swarm_bench(
        quick=True, num_peers=2, model="tiny", base_slowdown=2.0, requests=8, repeats=1,
        refusing_peers=refusing_peers, goodput_mix=toy, goodput_requests=4, probes_per_system=3,
        probe_arrival_s=0.5, ttft_slo_factor=50.0, tpot_slo_factor=50.0,  # toy steps are ms: client jitter rules
    )  # fmt: skip
    json.dumps(result)
    assert result["bench"] == "serve-swarm"
    assert result["config"]["peers_refuse_predicted_misses"] is refusing_peers
    assert result["results"]["single_node_capacity_req_s"] > 0
    routing = result["results"]["routing"]
    assert set(routing) == set(POLICIES)
    answered = 0
    for summary in routing.values():
        (run,) = summary["runs"]
        assert run["requests"] == 8
        served = sum(p["requests"] for p in run["by_peer"].values())
        # answers that started on some peer; the rest were refused or given up on before a first token
        assert served <= 8 - run["refused"] <= served + run["abandoned"]
        assert set(run["by_peer"]) >= {"serve-0", "serve-1 (throttled)"}
        answered += served
    assert answered > 0
    assert "goodput_routing_vs_random" in result["ratios"]
