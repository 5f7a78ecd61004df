"""Config bounds name the field; checkpoints are atomic, verified, and corrupt ones fall back."""

from __future__ import annotations

import logging
from pathlib import Path

import pydantic
import pytest
import torch

from training.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from training.config import TrainingConfig
from training.inner import lr_factor


def test_defaults_are_valid_and_bad_values_name_the_field() -> None:
    TrainingConfig()
    for field, value in [("inner_steps", 0), ("outer_momentum", 1.5), ("codec", "int3"), ("round_timeout_s", -1)]:
        with pytest.raises(pydantic.ValidationError) as err:
            TrainingConfig.model_validate({field: value})
        assert field in str(err.value)
    with pytest.raises(pydantic.ValidationError, match=r"unknown_field|extra"):
        TrainingConfig.model_validate({"unknown_field": 1})
    with pytest.raises(pydantic.ValidationError, match="min_group_size"):
        TrainingConfig(min_group_size=8, target_group_size=4)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"inner_steps": 64, "total_steps": 32}, "inner_steps=64 exceeds total_steps=32"),
        ({"outer_optimizer": "streaming", "inner_steps": 8, "num_fragments": 16}, "num_fragments=16 exceeds"),
        ({"outer_optimizer": "streaming", "inner_steps": 8, "overlap_steps": 8}, "overlap_steps=8 must be <"),
    ],
)
def test_h_and_fragments_that_do_not_fit_the_run_name_the_field(values: dict, named: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=named):
        TrainingConfig.model_validate(values)
    # the same counts fit a run of the right length
    TrainingConfig.model_validate({**values, "total_steps": 1024, "inner_steps": 32, "overlap_steps": 1})


def test_lr_schedule_warms_up_then_decays() -> None:
    cfg = TrainingConfig(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, cfg) == pytest.approx(0.1)


def _save(root: Path, r: int) -> Path:
    return save_checkpoint(
        root, round_index=r, step=r * 10, model={"w": torch.full((3,), float(r))}, outer=[torch.ones(2) * r],
        inner_optimizer={"optimizer": {"state": {}, "param_groups": []}, "scheduler": {"last_epoch": r}}, keep=3,
    )  # fmt: skip


def test_round_trip_and_keep(tmp_path: Path) -> None:
    for r in range(1, 5):
        _save(tmp_path, r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-00000002", "round-00000003", "round-00000004"]
    ck = load_latest(tmp_path)
    assert ck is not None and ck.round_index == 4 and ck.step == 40
    assert torch.equal(ck.model["w"], torch.full((3,), 4.0)) and torch.equal(ck.outer[0], torch.ones(2) * 4)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_checkpoint_is_refused_and_previous_used(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    target = newest / "model.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        ck = load_latest(tmp_path)
    assert ck is not None and ck.round_index == 1
    assert "falling back" in caplog.text
