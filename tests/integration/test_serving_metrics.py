"""A serving node under load, seen from outside: `/metrics` counts every request in the vLLM-named histograms and
counters, the dashboard's JSON agrees and needs the API key (its page does not), and the node logs a status line.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.nodes import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NUM_REQUESTS = 8
MAX_TOKENS = 6
KEY = "metrics-test-key"


def _figure(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} {labels} not in /metrics"
    return float(match.group(1))


def _complete(http: str, i: int) -> int:
    body = {"model": "tiny", "prompt": f"def f{i}(x):", "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    chunks = 0
    with httpx.stream("POST", f"{http}/v1/completions", json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            chunks += line.startswith("data: {")
    return chunks


def test_metrics_count_requests_under_load(start_node, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{KEY}\n")
    node = start_node("server", "--roles", "serve", "--model", "tiny", "--api-key-file", str(keys),
                      "--set", "serving.dtype=float32", "--set", "node.status_interval_s=0.5")  # fmt: skip
    wait_until(lambda: "vllm:num_requests_running" in httpx.get(f"{node.http}/metrics", timeout=5).text, 60)
    with ThreadPoolExecutor(NUM_REQUESTS) as pool:  # all at once: they share batches and queue
        chunks = list(pool.map(lambda i: _complete(node.http, i), range(NUM_REQUESTS)))
    assert all(c >= 1 for c in chunks)

    metrics = httpx.get(f"{node.http}/metrics", timeout=5).text  # an open path: no key
    assert _figure(metrics, "vllm:time_to_first_token_seconds_count") == NUM_REQUESTS
    assert _figure(metrics, "vllm:time_to_first_token_seconds_bucket", 'le="+Inf"') == NUM_REQUESTS
    assert _figure(metrics, "vllm:e2e_request_latency_seconds_count") == NUM_REQUESTS
    assert _figure(metrics, "vllm:inter_token_latency_seconds_count") == NUM_REQUESTS * (MAX_TOKENS - 1)
    assert _figure(metrics, "vllm:generation_tokens_total") == NUM_REQUESTS * MAX_TOKENS
    assert _figure(metrics, "vllm:request_success_total", 'finished_reason="length"') == NUM_REQUESTS
    assert _figure(metrics, "vllm:num_requests_running") == 0
    assert 0 <= _figure(metrics, "vllm:kv_cache_usage_perc") <= 1

    # The dashboard: the page is open, its data needs the key and agrees with /metrics.
    page = httpx.get(f"{node.http}/", timeout=5)
    assert page.status_code == 200 and "/static/dashboard.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{node.http}/v1/swarm/dashboard", timeout=5).status_code == 401
    data = httpx.get(f"{node.http}/v1/swarm/dashboard", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).json()
    assert data["serving"]["requests"] == NUM_REQUESTS
    assert data["serving"]["generation_tokens"] == NUM_REQUESTS * MAX_TOKENS
    assert [p["peer_id"] for p in data["peers"]] == [node.peer_id]

    wait_until(lambda: f"{NUM_REQUESTS} requests finished" in node.log_path.read_text(), 30)
    assert re.search(
        r"serving: prompt throughput [\d.]+ tokens/s, generation throughput [\d.]+ tokens/s, "
        r"running \d+ reqs, waiting \d+ reqs, KV cache usage [\d.]+%",
        node.log_path.read_text(),
    )
