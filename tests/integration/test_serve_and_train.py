"""A node with `--roles serve,train`: it keeps answering generation within its SLOs, by the engine's own
accounting, while its training rounds advance (micro-steps granted by the arbiter), with both roles where its
placement put them. Counted, never timed."""

from __future__ import annotations

import re

import httpx
import pytest
import torch

from tests.integration.nodes import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NODE = ("--roles", "serve,train", "--model", "tiny", "--heartbeat-s", "1",
        "--set", "training.inner_steps=2", "--set", "training.total_steps=100000",
        "--set", "training.max_corpus_bytes=100000", "--set", "training.eval_batches=1",
        "--set", "training.matchmaking_time_s=0.5", "--set", "training.batch_size=4")  # fmt: skip
# Generous targets: what is checked is that training never takes serving past them, not this machine's speed.
TTFT_MS, TPOT_MS = 20_000.0, 5_000.0
REQUESTS = 12


def _metric(text: str, name: str, label: str = "") -> float:
    labels = rf"\{{[^}}]*{re.escape(label)}[^}}]*\}}" if label else r"(?:\{[^}]*\})?"
    match = re.search(rf"^{re.escape(name)}{labels} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _round(node) -> int:  # type: ignore[no-untyped-def]
    rows = [r for r in node.peers() if r["self"]]
    return rows[0]["training"]["round"] if rows else 0


def test_serving_keeps_its_slos_while_training_rounds_advance(start_node, tmp_path) -> None:
    node = start_node("st", *NODE, "--set", f"training.checkpoint_dir={tmp_path / 'ck'}", wait=False)
    node.wait_ready(timeout_s=180)  # two roles to start (model, profile, averaging process): slow on a busy machine
    if not torch.cuda.is_available():  # a CPU-only node: both roles placed on the CPU, co-scheduled, and shown
        placement = httpx.get(f"{node.http}/healthz", timeout=10).json()["placement"]
        assert placement == {"serve": ["cpu"], "rollouts": None, "train": "cpu", "cpu_work": "cpu",
                             "co_scheduled": True}  # fmt: skip
        me = next(r for r in node.peers() if r["self"])
        assert [d["roles"] for d in me["devices"] if d["kind"] == "cpu"] == [["serve", "train", "cpu_work"]]
    wait_until(lambda: _round(node) >= 1, timeout_s=150, interval_s=0.5)
    start_round = _round(node)
    with httpx.Client(timeout=120) as client:
        for i in range(REQUESTS):
            body = {"model": "tiny", "prompt": f"request {i}:", "max_tokens": 12, "ttft_ms": TTFT_MS,
                    "tpot_ms": TPOT_MS, "temperature": 0}  # fmt: skip
            reply = client.post(f"{node.http}/v1/completions", json=body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["text"] is not None
    wait_until(lambda: _round(node) > start_round, timeout_s=150, interval_s=0.5)
    metrics = httpx.get(f"{node.http}/metrics", timeout=10).text
    assert _metric(metrics, "swarm_serving_slo_total", 'outcome="met"') == REQUESTS
    assert _metric(metrics, "swarm_serving_slo_total", 'outcome="missed"') == 0
    assert "swarm_serving_refused_total{" not in metrics or _metric(metrics, "swarm_serving_refused_total") == 0
    assert _metric(metrics, "swarm_train_step") >= 2 * (start_round + 1)
    # Training went through the arbiter: micro-steps granted, every online request seen arriving.
    assert _metric(metrics, "swarm_coschedule_micro_steps_total") >= _metric(metrics, "swarm_train_step") > 0
    assert _metric(metrics, "swarm_coschedule_online_arrivals_total") >= REQUESTS
