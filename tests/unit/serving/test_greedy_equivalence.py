"""Greedy tokens from the engine equal transformers' `generate()` greedy, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from serving.engine import Engine
from serving.request import GenerateParams
from tests.unit.serving.helpers import run_all, tiny_config

PROMPT_LENGTHS = [1, 5, 17, 40, 63, 100]
NEW_TOKENS = 24


def reference(model_dir: Path, prompts: list[list[int]], eos: list[int]) -> list[list[int]]:
    hf = AutoModelForCausalLM.from_pretrained(model_dir)
    outs = []
    for p in prompts:
        ids = hf.generate(torch.tensor([p]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos)
        outs.append(ids[0, len(p) :].tolist())
    return outs


def prompts_for(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, min(vocab, 256), (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["embedded", "qwen3", "qwen2"])
@pytest.mark.parametrize("chunked", [True, False])
def test_engine_greedy_matches_transformers(
    family: str, chunked: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model_dir = request.getfixturevalue({"embedded": "tiny_embedded_dir"}.get(family, f"{family}_dir"))
    # A small token budget forces prompts to be split into chunks that share steps with decodes.
    config = tiny_config(tmp_path, model=str(model_dir), chunked_prefill=chunked, max_batch_tokens=32)
    with Engine(config) as engine:
        prompts = prompts_for(engine.vocab_size)
        params = [
            GenerateParams(prompt_token_ids=p, max_new_tokens=NEW_TOKENS, request_id=f"r{i}")
            for i, p in enumerate(prompts)
        ]
        got = run_all(engine, params)
        eos = sorted(engine.eos_token_ids)
    expected = reference(model_dir, prompts, eos)
    for i, exp in enumerate(expected):
        assert got.tokens[f"r{i}"] == exp, f"prompt {i} ({PROMPT_LENGTHS[i]} tokens)"
        assert got.done[f"r{i}"].usage["completion_tokens"] == len(exp)


def test_embedded_model_hash_survives_save_and_load(tiny_embedded_dir: Path) -> None:
    from serving.model import build_embedded_model, load_model

    built = build_embedded_model("tiny", seed=0)
    loaded = load_model(str(tiny_embedded_dir))
    assert loaded.model_hash == built.model_hash
    assert build_embedded_model("tiny", seed=1).model_hash != built.model_hash
