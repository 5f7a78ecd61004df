"""GRPO against hand-computed TRL figures, and the LoRA policy's step, deltas and checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from serving.model import build_embedded_model
from training.grpo import LoraPolicy, Sample, completion_logprobs, group_advantages, grpo_token_loss
from training.rl_config import RLConfig

torch.set_num_threads(1)


def test_group_advantages_match_trl_hand_computation() -> None:
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]))
    std = math.sqrt(4 * 0.25 / 3)  # unbiased, as torch.std
    expected = 0.5 / (std + 1e-4)
    assert adv[0].tolist() == pytest.approx([expected, -expected, -expected, expected], rel=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # no variance: no signal


def test_clipped_token_loss_matches_hand_computation() -> None:
    old = torch.zeros(3, 2)
    logps = torch.log(torch.tensor([[1.5, 1.1], [0.5, 0.9], [2.0, 1.0]]))  # ratios, since old logps are 0
    adv = torch.tensor([1.0, -1.0, 0.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    # row 0: ratio 1.5 clipped to 1.28 -> -1.28; ratio 1.1 -> -1.1. row 1: A<0, ratio 0.5: min(-0.5, -0.8) = -0.8
    # -> +0.8; the masked token does not count. row 2: A=0 -> 0. Sum -1.58 over 5 tokens.
    loss = grpo_token_loss(logps, old, adv, mask, eps_low=0.2, eps_high=0.28)
    assert loss.item() == pytest.approx((-1.28 - 1.1 + 0.8) / 5, rel=1e-6)
    assert grpo_token_loss(logps, old, adv, mask, 0.2, 0.28, num_tokens=10).item() == pytest.approx(
        -1.58 / 10, rel=1e-6
    )


def test_on_policy_gradient_is_the_policy_gradient() -> None:
    """With old = current detached, d loss / d logp = -A / num_tokens for every unmasked token."""
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss = grpo_token_loss(logps, logps.detach(), torch.tensor([2.0]), torch.ones(1, 2), 0.2, 0.28)
    loss.backward()
    assert logps.grad.tolist() == [[-1.0, -1.0]]


def _policy(**cfg: object) -> LoraPolicy:
    return LoraPolicy(build_embedded_model("tiny", seed=0).hf_model, RLConfig(lr=5e-2, **cfg), pad_id=258)


def test_a_step_raises_the_logprob_of_a_positive_advantage_completion(tmp_path: Path) -> None:
    policy = _policy()
    good = Sample([51, 43, 52, 61], [55, 257], 1.0)
    bad = Sample([51, 43, 52, 61], [56, 257], -1.0)
    with torch.no_grad():
        before, mask = completion_logprobs(policy.model, [good, bad], 258)
    stats = policy.step([good, bad, Sample([49], [50], 0.0)])
    assert (stats["learned"], stats["tokens"], policy.version) == (2.0, 5.0, 1)
    with torch.no_grad():
        after, _ = completion_logprobs(policy.model, [good, bad], 258)
    gain = ((after - before) * mask).sum(dim=1)
    assert gain[0] > 0 > gain[1]


def test_zero_advantage_batch_takes_no_step() -> None:
    policy = _policy()
    stats = policy.step([Sample([49], [50, 257], 0.0), Sample([49], [51, 257], 0.0)])
    assert (stats["learned"], stats["loss"], policy.version) == (0.0, 0.0, 0)


def test_deltas_are_merged_minus_base_weights_and_checkpoint_resumes(tmp_path: Path) -> None:
    policy = _policy()
    policy.step([Sample([51, 43], [55, 257], 1.0), Sample([51, 43], [56, 257], -1.0)])
    deltas = policy.deltas()
    assert len(deltas) == 7 * 2  # seven projections in each of the two layers
    base = build_embedded_model("tiny", seed=0).hf_model.state_dict()
    import copy

    merged = copy.deepcopy(policy.model).merge_and_unload().state_dict()
    for name, delta in deltas.items():
        assert torch.allclose(base[name] + delta, merged[name], atol=1e-6)
    policy.save(tmp_path, round_index=4)
    fresh = _policy()
    assert fresh.load(tmp_path) == 5 and fresh.version == 1
    for name, delta in fresh.deltas().items():
        assert torch.equal(delta, deltas[name])
    assert _policy().load(tmp_path / "none") is None
