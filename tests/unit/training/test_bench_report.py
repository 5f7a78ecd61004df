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


def test_progress_is_the_share_of_ddp_s_loss_drop_for_every_system() -> None:
    ddp = summarize([peer(1.5, 1000, [1.6, 1.5])])
    local = summarize([{**peer(1.6, 0, [1.7, 1.6]), "bytes_counted": "nothing sent"}, peer(1.7, 0, [1.7, 1.7])])
    diloco = summarize([peer(1.45, 10, [1.6, 1.45])])
    r = ratios({"ddp": ddp, "local_only": local, "diloco": diloco}, start_loss=1.75)
    # from 1.75: ddp took off 0.25; local_only (mean of its peers, 1.65) 0.10; diloco 0.30
    assert r["local_only_progress_vs_ddp"] == pytest.approx(0.4)
    assert r["diloco_progress_vs_ddp"] == pytest.approx(1.2)
    assert r["local_only_loss_vs_ddp"] == pytest.approx(1.1)
    assert "local_only_bytes_reduction" not in r  # it sends nothing: no ratio to speak of
    # a loss that rose from the start is negative progress, not hidden
    worse = ratios({"ddp": ddp, "local_only": summarize([peer(1.8, 0, [1.8])])}, start_loss=1.75)
    assert worse["local_only_progress_vs_ddp"] == pytest.approx(-0.2)
    # without a start loss, or with a baseline that learned nothing, there is no progress to divide by
    assert not any(k.endswith("_progress_vs_ddp") for k in ratios({"ddp": ddp, "diloco": diloco}))
    assert not any(k.endswith("_progress_vs_ddp") for k in ratios({"ddp": ddp, "diloco": diloco}, start_loss=1.5))


@pytest.mark.parametrize("quick", [True, False])
def test_systems_share_everything_but_the_exchange(quick: bool) -> None:
    configs, steps = bench_configs(quick)
    assert set(configs) == {"ddp", "local_only", "diloco", "noloco", "streaming_int4"}
    for name, cfg in configs.items():
        shared = ("batch_size", "seq_len", "inner_lr", "warmup_steps", "total_steps", "min_lr_ratio", "model")
        assert [getattr(cfg, k) for k in shared] == [getattr(configs["ddp"], k) for k in shared], name
    assert steps % configs["diloco"].inner_steps == 0 and steps % configs["noloco"].inner_steps == 0
    assert configs["streaming_int4"].codec == "int4"
