"""The routing bench end to end at toy size: real serving peers, the client, both policies, the JSON's shape."""

from __future__ import annotations

import json

import pytest

from serving.bench_workload import Mix
from swarm.bench_swarm import POLICIES, run_swarm_bench


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_routing_bench_runs_both_policies_over_real_peers() -> None:
    toy = Mix("toy", 24, 0.3, (8, 48), 8, 0.2, (4, 12))
    result = run_swarm_bench(
        quick=True, num_peers=2, model="tiny", base_slowdown=2.0, requests=8, repeats=1,
        goodput_mix=toy, goodput_requests=4, probes_per_system=2, probe_arrival_s=0.5,
    )  # fmt: skip
    json.dumps(result)
    assert result["bench"] == "serve-swarm"
    assert result["results"]["single_node_capacity_req_s"] > 0
    routing = result["results"]["routing"]
    assert set(routing) == set(POLICIES)
    for summary in routing.values():
        (run,) = summary["runs"]
        assert run["requests"] == 8
        served = sum(p["requests"] for p in run["by_peer"].values())
        # answers that started on some peer; the rest were refused or given up on before a first token
        assert 0 < served <= 8 - run["refused"] <= served + run["abandoned"]
        assert set(run["by_peer"]) >= {"serve-0", "serve-1 (throttled)"}
    assert "goodput_routing_vs_random" in result["ratios"]
