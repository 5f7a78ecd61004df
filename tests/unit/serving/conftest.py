"""Fixtures of the serving tests: tiny checkpoints saved to temp dirs, and engines that serve them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serving.engine import Engine
from serving.model import build_byte_tokenizer, build_embedded_model, save_model
from tests.unit.serving.helpers import tiny_config

torch.set_num_threads(1)  # shared CI machines: one thread per process avoids OpenMP oversubscription


@pytest.fixture(scope="session")
def tiny_embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded `tiny` model written as a checkpoint dir, as `swarm model save tiny DIR` does."""
    return save_model(build_embedded_model("tiny", seed=0), tmp_path_factory.mktemp("tiny-embedded"))


def _save_random(family: str, directory: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    common = dict(
        vocab_size=272,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.1,
        eos_token_id=257,
    )
    torch.manual_seed(1)
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=32, rope_theta=1e6, tie_word_embeddings=True, **common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1e4, tie_word_embeddings=False, **common))
    model.save_pretrained(directory)
    build_byte_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_random("qwen3", tmp_path_factory.mktemp("qwen3"))


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_random("qwen2", tmp_path_factory.mktemp("qwen2"))


@pytest.fixture
def tiny_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(tiny_config(tmp_path))
    engine.start()
    yield engine
    engine.stop()
