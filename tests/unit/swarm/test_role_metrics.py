"""Role figures for /metrics and the status line, from fake roles: the names vLLM dashboards expect, swarm_train_*
and swarm_rl_* from the roles' own counters, throughput from an injected clock."""

from __future__ import annotations

import math
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from serving.engine import LoadStats
from serving.stats import ServingStats
from swarm.runtime.role_metrics import RlCounters, RoleCollector, StatusLine


class FakeEngine:
    model_id = "m<1>"

    def __init__(self) -> None:
        self.stats = ServingStats()

    def load(self) -> LoadStats:
        return LoadStats(
            running=2, waiting=3, predicted_ttft_ms=10.0, decode_tok_s=5.0, free_kv_tokens=64, prefill_tok_s=50.0
        )

    def counters(self) -> dict[str, int]:
        return {"preemptions": 4, "kv_blocks": 10, "kv_blocks_free": 6}


def _serve_role(engine: FakeEngine) -> SimpleNamespace:
    return SimpleNamespace(name="serve", failure=None, engine=engine)


def _train_role() -> SimpleNamespace:
    status = SimpleNamespace(round_index=3, step=120, loss=2.5, eval_loss=math.nan, exchanges_ok=3,
                             exchanges_failed=1, resyncs=0, rounds_alone=0)  # fmt: skip
    counters = SimpleNamespace(bytes_sent=1000, bytes_received=900, restarts=2)
    return SimpleNamespace(name="train", failure=None, peer=SimpleNamespace(status=status),
                           averager=SimpleNamespace(counters=counters))  # fmt: skip


class FakeRlRole:
    name = "rl"
    failure = None

    def rl_counters(self) -> RlCounters:
        return RlCounters(round=7, reward=0.25, groups_received=10, groups_used=8, rejected={"bad_score": 2})


def _scrape(roles: list) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoleCollector(roles))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_every_role_exports_its_figures() -> None:
    engine = FakeEngine()
    engine.stats.first_token(0.03)
    engine.stats.tokens(5, None)
    engine.stats.finished("stop", prompt_tokens=7, e2e_s=0.4, tpot_s=0.01)
    engine.stats.refused("OVERLOADED")
    text = _scrape([_serve_role(engine), _train_role(), FakeRlRole()])
    model = 'model_name="m<1>"'
    assert f'vllm:time_to_first_token_seconds_bucket{{le="0.04",{model}}} 1.0' in text
    assert f'vllm:time_to_first_token_seconds_bucket{{le="0.02",{model}}} 0.0' in text
    assert f"vllm:time_per_output_token_seconds_count{{{model}}} 0.0" in text  # the older name of inter-token
    assert f"vllm:num_requests_running{{{model}}} 2.0" in text
    assert f"vllm:num_requests_waiting{{{model}}} 3.0" in text
    assert f"vllm:kv_cache_usage_perc{{{model}}} 0.4" in text
    assert f"vllm:num_preemptions_total{{{model}}} 4.0" in text
    assert f"vllm:prompt_tokens_total{{{model}}} 7.0" in text
    assert f"vllm:generation_tokens_total{{{model}}} 5.0" in text
    assert f'vllm:request_success_total{{finished_reason="stop",{model}}} 1.0' in text
    assert f'swarm_serving_refused_total{{code="OVERLOADED",{model}}} 1.0' in text
    assert "swarm_train_round 3.0" in text and "swarm_train_step 120.0" in text and "swarm_train_loss 2.5" in text
    assert "swarm_train_eval_loss" not in text  # NaN: no figure rather than a NaN sample
    assert 'swarm_train_bytes_averaged_total{direction="sent"} 1000.0' in text
    assert 'swarm_train_exchanges_total{outcome="failed"} 1.0' in text
    assert 'swarm_train_exchanges_total{outcome="alone"} 0.0' in text
    assert "swarm_train_averager_restarts_total 2.0" in text
    assert "swarm_rl_round 7.0" in text and "swarm_rl_reward 0.25" in text
    assert "swarm_rl_groups_received_total 10.0" in text and "swarm_rl_groups_used_total 8.0" in text
    assert 'swarm_rl_groups_rejected_total{reason="bad_score"} 2.0' in text


def test_failed_or_unready_roles_export_nothing() -> None:
    failed = _serve_role(FakeEngine())
    failed.failure = "engine thread died"
    unready = SimpleNamespace(name="serve", failure=None, engine=None)
    assert "vllm:" not in _scrape([failed, unready])


def test_status_lines_give_throughput_over_the_interval() -> None:
    now = [100.0]
    engine = FakeEngine()
    status = StatusLine([_serve_role(engine), _train_role(), FakeRlRole()], clock=lambda: now[0])
    first = status.lines()
    assert first[0].startswith("serving: prompt throughput 0.0 tokens/s, generation throughput 0.0 tokens/s")
    engine.stats.tokens(50, None)
    engine.stats.finished("length", prompt_tokens=20, e2e_s=1.0, tpot_s=0.02)
    now[0] += 10.0
    serving, training, rl = status.lines()
    assert serving == ("serving: prompt throughput 2.0 tokens/s, generation throughput 5.0 tokens/s, running 2 reqs,"
                       " waiting 3 reqs, KV cache usage 40.0%, 1 requests finished")  # fmt: skip
    assert training == "training: round 3, step 120, loss 2.5000, eval loss -, exchanges 3 ok / 1 failed"
    assert rl == "rl: round 7, reward 0.2500, groups received 10, used 8, rejected 2"
