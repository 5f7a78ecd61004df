"""Config of who trains on what and how: a peer's shard must exist; bf16 autocast is taken on CPU when asked."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from training.config import TrainingConfig
from training.inner import InnerLoop
from training.model import load_train_model


def test_data_shard_must_be_one_of_the_shards() -> None:
    assert TrainingConfig(data_shards=2, data_shard=1).data_shard == 1
    with pytest.raises(ValidationError, match="data_shard=2 must be < data_shards=2"):
        TrainingConfig(data_shards=2, data_shard=2)


@pytest.mark.parametrize(("precision", "bf16"), [("auto", False), ("fp32", False), ("bf16", True)])
def test_precision_chooses_autocast_on_cpu(precision: str, bf16: bool) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the CPU choice")
    cfg = TrainingConfig(precision=precision, total_steps=2, inner_steps=1, warmup_steps=0)
    loop = InnerLoop(load_train_model(cfg.model).model, cfg)
    assert loop.cpu_bf16 is bf16
    with loop._autocast():
        assert torch.is_autocast_enabled("cpu") is bf16
    batch = torch.randint(0, 256, (2, 16))
    assert torch.isfinite(torch.tensor(loop.step(batch)))
    assert all(p.dtype == torch.float32 for p in loop.params)  # autocast: weights stay fp32
