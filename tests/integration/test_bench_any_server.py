"""`swarm bench serve --base-url URL --model NAME` against a running node's OpenAI API, at toy size: the seeded
workload goes over real HTTP to a real serving node, the table is printed and the JSON written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from serving.bench import BenchSettings
from serving.bench_workload import Mix
from swarm.bench.bench_http import HttpServer, run_http_trace, salted
from swarm.cli import serving as cli_serving
from tests.integration.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(240)]

TOY = Mix("toy", 24, 0.3, (8, 48), 8, 0.2, (4, 12))


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[NodeProcess]:
    workdir = tmp_path_factory.mktemp("bench-any-server")
    server = NodeProcess(workdir, "server", ["--roles", "serve", "--model", "tiny", "--heartbeat-s", "0.5",
                                             "--set", "serving.dtype=float32"]).wait_ready(timeout_s=120)  # fmt: skip
    try:
        wait_until(lambda: httpx.get(f"{server.http}/v1/models", timeout=5).json()["data"], timeout_s=30)
        yield server
    finally:
        server.stop()


def _toy(quick: bool, **overrides: object) -> BenchSettings:
    return BenchSettings(
        saturation_mix=TOY, saturation_requests=6, goodput_mix=TOY, goodput_requests=4, probe_arrival_s=0.5,
        probes_per_system=3, ttft_slo_factor=50.0, tpot_slo_factor=50.0,
        **{k: v for k, v in overrides.items() if v is not None},
    )  # fmt: skip


def test_every_token_of_a_streamed_answer_is_timed(node: NodeProcess) -> None:
    from serving.bench_workload import make_requests

    reqs = salted(make_requests(TOY, 3, 20.0, seed=5, vocab=256), 1)
    records, wall = run_http_trace(HttpServer(f"{node.http}/v1", "tiny"), reqs, 60)
    assert wall > 0
    for req, record in zip(reqs, records, strict=True):
        assert not record.refused and not record.abandoned
        assert record.num_tokens == req.max_new_tokens  # ignore_eos: the workload's lengths, all of them
        assert len(record.token_times_s) == req.max_new_tokens  # one chunk per token, each timestamped
        assert record.ttft_s is not None and record.ttft_s > 0


def test_cli_benches_a_running_node_prints_the_table_and_writes_json(
    node: NodeProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(BenchSettings, "for_size", classmethod(lambda cls, quick, **kw: _toy(quick, **kw)))
    out = tmp_path / "server.json"
    app, bench, model = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    app.add_typer(model, name="model")
    cli_serving.register(app, bench, model)
    result = CliRunner().invoke(app, ["bench", "serve", "--base-url", f"{node.http}/v1", "--model", "tiny",
                                      "--json", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "swarm bench serve" in result.output and "server" in result.output  # the table, with its one system
    data = json.loads(out.read_text())
    assert data["bench"] == "serve-http" and data["config"]["base_url"].endswith("/v1/completions")
    saturation = data["results"]["saturation"]["server"]
    assert saturation["requests"] == 6 and saturation["refused"] == 0
    assert saturation["output_tokens"] > 0 and saturation["output_tok_s"] > 0
    goodput = data["results"]["goodput"]
    assert goodput["slo"]["ttft_s"] > 0 and goodput["slo"]["tpot_s"] > 0
    assert set(goodput["capacity_req_s_by_definition"]["server"]) == {"with_stalls", "mean_tpot"}
    assert 1 <= len(goodput["probes"]) <= 3
    assert all(p["requests"] >= 4 for p in goodput["probes"])
    assert "cpu_capability" in data["machine"]
