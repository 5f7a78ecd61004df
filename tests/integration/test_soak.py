"""A toy soak: one serving node under a few seconds of streamed load with the garbage-writing peer and no kills;
every answer equals the greedy reference and the report has the figures the full soak publishes."""

from __future__ import annotations

import pytest

from protocols.ids import GENERATE_PROTOCOL, PEERS_PROTOCOL
from swarm.bench.bench_soak import SoakSettings, run_soak

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(240)]


def test_a_no_kill_soak_loses_no_token_and_reports_every_ratio() -> None:
    settings = SoakSettings(
        serve_nodes=1, train_nodes=0, load_s=8.0, warmup_s=0.0, concurrency=2, max_new_tokens=12, kills=False,
        # Our own protocols only: what garbage on the library's gossip protocols does is tested where it is fixed.
        garbage_protocols=(PEERS_PROTOCOL, GENERATE_PROTOCOL), garbage_interval_s=0.5, garbage_bytes=1 << 16,
        sample_interval_s=1.0,
    )  # fmt: skip
    result = run_soak(settings)

    assert {"bench", "config", "results", "ratios"} <= set(result)
    assert set(result["ratios"]) == {"lost_tokens", "duplicated_tokens", "failed_request_fraction", "memory_growth"}
    requests = result["results"]["requests"]
    assert requests["completed"] >= 2 and requests["completed"] == requests["requests"]
    assert requests["streamed_tokens"] >= requests["completed"] and requests["failed_by_code"] == {}
    assert sum(result["results"]["started_on"].values()) == requests["requests"]
    assert result["ratios"]["lost_tokens"] == 0 and result["ratios"]["duplicated_tokens"] == 0
    assert result["ratios"]["failed_request_fraction"] == 0.0
    assert result["results"]["kills"] == [] and result["results"]["crashes"] == {}
    assert result["results"]["failed_requests"] == []
    assert result["results"]["garbage"]["streams"].get("written", 0) >= 2
    assert set(result["results"]["memory"]) == {"s0"}
    assert isinstance(result["ratios"]["memory_growth"], float)
