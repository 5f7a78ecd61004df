"""After an adapter swap the engine serves peft's merged model: its logprobs equal a forward of the merged model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from serving.engine import Engine
from serving.errors import EngineError
from serving.model import build_embedded_model
from serving.request import GenerateParams
from tests.unit.serving.helpers import tiny_config
from training.grpo import LoraPolicy
from training.rl_config import RLConfig

torch.set_num_threads(1)
PROMPT = [51, 43, 52, 61]  # "3+4="


def _trained_policy() -> LoraPolicy:
    policy = LoraPolicy(build_embedded_model("tiny", seed=0).hf_model, RLConfig(lora_r=4, lora_alpha=8), pad_id=258)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # B starts at zero (peft's init): give the adapter a real, large effect
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return policy


def _reference_logprobs(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([PROMPT + tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[len(PROMPT) - 1 : -1]


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-4), ("bfloat16", 3e-2)])
def test_engine_after_swap_equals_peft_merged_model(tmp_path: Path, dtype: str, tolerance: float) -> None:
    policy = _trained_policy()
    merged = copy.deepcopy(policy.model).merge_and_unload().eval()
    base = build_embedded_model("tiny", seed=0).hf_model.float().eval()
    params = dict(prompt_token_ids=PROMPT, max_new_tokens=10, temperature=0.9, seed=3, logprobs=3)
    with Engine(tiny_config(tmp_path, dtype=dtype)) as engine:
        before = engine.generate(GenerateParams(**params), timeout_s=60)
        engine.swap_weights(1, policy.deltas())
        assert engine.weights_version == 1
        after = engine.generate(GenerateParams(**params), timeout_s=60)
        engine.swap_weights(2, {})  # back to the base, rebuilt from the kept copy
        restored = engine.generate(GenerateParams(**params), timeout_s=60)
    assert after.token_ids != before.token_ids  # the adapter changes what is sampled
    for result, model in ((after, merged), (before, base), (restored, base)):
        ref = _reference_logprobs(model, result.token_ids)
        got = torch.tensor([lp.logprob for lp in result.choices[0].logprobs])
        want = ref[torch.arange(len(result.token_ids)), torch.tensor(result.token_ids)]
        assert torch.allclose(got, want, atol=tolerance), (got - want).abs().max()
    assert restored.token_ids == before.token_ids


def test_a_bad_delta_fails_the_swap_not_the_engine(tmp_path: Path) -> None:
    with Engine(tiny_config(tmp_path)) as engine:
        with pytest.raises(EngineError, match="no servable"):
            engine.swap_weights(1, {"model.layers.0.self_attn.x_proj.weight": torch.zeros(1)})
        with pytest.raises(EngineError, match="shape"):
            engine.swap_weights(1, {"model.layers.0.self_attn.q_proj.weight": torch.zeros(3, 3)})
        assert engine.weights_version == 0
        result = engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=4), timeout_s=60)
        assert len(result.token_ids) == 4
