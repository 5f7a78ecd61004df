"""A late joiner's learning rate continues the schedule from the group's step, during and after the join."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from comms.averaging import AveragingError
from protocols.errors import ErrorCode
from training.config import TrainingConfig
from training.consensus import state_digest
from training.data import TokenData
from training.inner import lr_factor
from training.trainer import TrainingPeer

JOIN_STEP = 12  # past warm-up: on the cosine, where every step has its own rate


def tiny() -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
            "inner_steps": 40, "batch_size": 2, "seq_len": 16, "warmup_steps": 4, "total_steps": 40,
            "inner_lr": 1e-2, "min_lr_ratio": 0.1,
        }
    )  # fmt: skip


def corpus() -> TokenData:
    gen = torch.Generator().manual_seed(0)
    return TokenData(torch.randint(0, 256, (20_000,), generator=gen), 0.05, 16)


class DonorAverager:
    """Hands out one peer's state, as a group member would; rounds never complete (no group)."""

    peer_id = "joiner"

    def __init__(self, donor: TrainingPeer) -> None:
        self.donor = donor

    def donors(self, timeout_s: float) -> list[str]:
        return ["donor"]

    def load_state(
        self, timeout_s: float, peer: str, min_step: int = 0, metadata_only: bool = False
    ) -> tuple[dict, list]:
        meta = {
            "round": 0,
            "step": self.donor.status.step,
            "model_hash": self.donor.model_hash,
            "digest": state_digest(self.donor.outer.state_tensors()),
        }
        return meta, [] if metadata_only else [t.clone() for t in self.donor.state_tensors()]

    def step(self, *args: Any, **kwargs: Any) -> Any:
        raise AveragingError(ErrorCode.TIMEOUT, "no group")

    def share_state(self, metadata: dict, tensors: list) -> None:
        pass


def lrs(peer: TrainingPeer) -> list[float]:
    return [g["lr"] for g in peer.inner.optimizer.param_groups]


def test_joiner_rate_follows_the_schedule_from_the_group_step() -> None:
    cfg, data = tiny(), corpus()
    donor = TrainingPeer(cfg, data, peer_id="donor", shard_index=0, num_shards=2)
    donor.run(JOIN_STEP)
    joiner = TrainingPeer(cfg, data, peer_id="joiner", shard_index=1, num_shards=2, averager=DonorAverager(donor))
    how = joiner.resume_or_join(join_timeout_s=1.0)
    assert "joined at step 12" in how
    assert lrs(joiner) == pytest.approx([cfg.inner_lr * lr_factor(JOIN_STEP, cfg)])
    assert lrs(joiner) == pytest.approx(lrs(donor))
    for done in range(1, 4):
        joiner.run(1)
        donor.run(1)
        want = cfg.inner_lr * lr_factor(JOIN_STEP + done, cfg)
        assert lrs(joiner) == pytest.approx([want]) and lrs(donor) == pytest.approx([want])
    assert cfg.inner_lr * lr_factor(1, cfg) != pytest.approx(lrs(joiner)[0])  # not restarted from step 0
