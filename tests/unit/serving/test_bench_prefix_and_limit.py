"""The shared-prefix workload of the bench (cache on and off on one engine) and the compute limit's arithmetic."""

from __future__ import annotations

import pytest
import torch

from serving.bench_prefix import SHARED_PREFIX_TOKENS, SUFFIX_RANGE, prefix_cache_gain, shared_prefix_prompts
from serving.compute_limit import compute_limit, flops_per_token
from serving.engine import Engine
from serving.model import build_embedded_model


def test_prompts_share_the_prefix_and_differ_after_it() -> None:
    prompts = shared_prefix_prompts(5, seed=1)
    assert all(p[:SHARED_PREFIX_TOKENS] == prompts[0][:SHARED_PREFIX_TOKENS] for p in prompts)
    assert all(SUFFIX_RANGE[0] <= len(p) - SHARED_PREFIX_TOKENS <= SUFFIX_RANGE[1] for p in prompts)
    assert len({tuple(p) for p in prompts}) == 5


def test_cache_on_serves_the_prefix_and_cache_off_prefills_everything(tiny_engine: Engine) -> None:
    result = prefix_cache_gain(tiny_engine, requests=3, seed=2)
    block = tiny_engine.config.block_size_tokens
    full_prefix_blocks = SHARED_PREFIX_TOKENS // block
    assert result["prompt_tokens_cached"]["off"] == 0
    # every "on" request finds at least the shared prefix's full blocks cached
    assert result["prompt_tokens_cached"]["on"] >= 3 * full_prefix_blocks * block
    assert result["ttft_ms_cache_on"] > 0 and result["ttft_ms_cache_off"] > 0
    assert result["prefix_cache_ttft_gain"] == result["ttft_ms_cache_off"] / result["ttft_ms_cache_on"]


def test_flops_per_token_counts_every_linear_weight_and_the_attention() -> None:
    model = build_embedded_model("tiny").hf_model
    cfg = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    embedding = model.get_input_embeddings().weight.numel()
    assert linear == sum(p.numel() for p in model.parameters() if p.dim() == 2) - embedding  # no lookup counted
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    attention = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * 100
    assert flops_per_token(model, 100) == 2 * linear + attention
    limit = compute_limit(model, torch.float32, torch.device("cpu"), 100)
    assert limit["tokens_per_s"] == pytest.approx(limit["matmul_gflop_s"] / limit["gflop_per_token"])
