"""The bench report: per-system summaries and the ratios against the data-parallel baseline."""

from __future__ import annotations

import pytest

from training.bench import bench_configs, ratios, summarize


def peer(loss: float, sent: int, curve: list[float]) -> dict:
    return {
        "final_eval_loss": loss, "final_eval_loss_local": loss + 0.01, "bytes_sent": sent, "bytes_received": sent,
        "bytes_counted": "tcp socket", "payload_bytes_sent": sent // 2, "payload_bytes_received": sent // 2,
        "exchanges_ok": 1, "exchanges_failed": 0, "wall_s": 2.0,
        "eval_history": [[10 * (i + 1), v] for i, v in enumerate(curve)],
    }  # fmt: skip


def test_summary_averages_peers_and_ratios_divide_by_the_baseline() -> None:
    ddp = summarize([peer(2.0, 1000, [3.0, 2.0]), peer(2.0, 1000, [3.0, 2.0])])
    diloco = summarize([peer(2.1, 10, [3.2, 2.2]), peer(2.3, 30, [3.4, 2.0])])
    assert diloco["final_eval_loss"] == pytest.approx(2.2)
    assert diloco["bytes_sent_per_peer"] == pytest.approx(20)
    assert diloco["eval_curve"] == {"steps": [10, 20], "loss": [pytest.approx(3.3), pytest.approx(2.1)]}
    r = ratios({"ddp": ddp, "diloco": diloco})
    assert r["diloco_loss_vs_ddp"] == pytest.approx(1.1)
    assert r["diloco_bytes_reduction"] == pytest.approx(50)  # socket counts: 1000 against 20
    assert diloco["payload_bytes_sent_per_peer"] == pytest.approx(10)
    assert r["diloco_payload_bytes_reduction"] == pytest.approx(50)  # 500 against 10
    assert set(r) == {
        "diloco_loss_vs_ddp",
        "diloco_bytes_reduction",
        "diloco_payload_bytes_reduction",
        "diloco_wall_vs_ddp",
    }


@pytest.mark.parametrize("quick", [True, False])
def test_systems_share_everything_but_the_exchange(quick: bool) -> None:
    configs, steps = bench_configs(quick)
    assert set(configs) == {"ddp", "diloco", "noloco", "streaming_int4"}
    for name, cfg in configs.items():
        assert (cfg.batch_size, cfg.seq_len, cfg.inner_lr, cfg.model) == (
            configs["ddp"].batch_size, configs["ddp"].seq_len, configs["ddp"].inner_lr, configs["ddp"].model,
        ), name  # fmt: skip
    assert steps % configs["diloco"].inner_steps == 0 and steps % configs["noloco"].inner_steps == 0
    assert configs["streaming_int4"].codec == "int4"
