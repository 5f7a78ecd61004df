"""Kill-and-restart of a training peer: it resumes from its last checkpoint and continues exactly as an
uninterrupted peer would (same data order, optimizer states and outer state)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from training.config import TrainingConfig
from training.data import TokenData
from training.trainer import TrainingPeer


def tiny(tmp: Path | None) -> TrainingConfig:
    return TrainingConfig.model_validate(
        {
            "model": {"hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2},
            "inner_steps": 3, "batch_size": 2, "seq_len": 16, "warmup_steps": 2, "total_steps": 30,
            "checkpoint_dir": str(tmp) if tmp else None,
        }
    )  # fmt: skip


def corpus() -> TokenData:
    gen = torch.Generator().manual_seed(0)
    return TokenData(torch.randint(0, 256, (20_000,), generator=gen), 0.05, 16)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    data = corpus()
    straight = TrainingPeer(tiny(None), data, peer_id="p", shard_index=0, num_shards=1)
    straight.run(9)

    first = TrainingPeer(tiny(tmp_path), data, peer_id="p", shard_index=0, num_shards=1)
    first.run(7)  # checkpoints after steps 3 and 6; step 7 is lost with the "crash"
    del first
    resumed = TrainingPeer(tiny(tmp_path), data, peer_id="p", shard_index=0, num_shards=1)
    how = resumed.resume_or_join(join_timeout_s=None)
    assert "resumed" in how and resumed.status.step == 6 and resumed.status.round_index == 2
    resumed.run(3)
    for a, b in zip(straight.inner.params, resumed.inner.params, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(straight.outer.state_tensors(), resumed.outer.state_tensors(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_checkpoint_directory_loads_with_transformers(tmp_path: Path) -> None:
    peer = TrainingPeer(tiny(tmp_path), corpus(), peer_id="p", shard_index=0, num_shards=1)
    peer.run(3)
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "round-00000001")
    ours = dict(peer.inner.model.named_parameters())
    for name, param in loaded.named_parameters():
        assert torch.equal(param, ours[name].detach()), name
