"""The model trained by default: a small Llama built in code from `ModelShape`, seeded, with byte-level ids.

Every peer that builds it from the same shape gets bit-identical weights, so no download is needed. Token ids
are bytes (0..255). This module knows nothing about peers or optimizers. When `serving` exposes its embedded
model builder, `build_model` is the one place to switch to it.
"""

from __future__ import annotations

import hashlib
import json

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.config import ModelShape


def llama_config(shape: ModelShape) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def build_model(shape: ModelShape) -> LlamaForCausalLM:
    """A freshly initialised model; the same `shape` (seed included) gives the same weights everywhere."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(shape.seed)
        model = LlamaForCausalLM(llama_config(shape))
    return model.float()


def model_hash(model: torch.nn.Module, shape: ModelShape) -> str:
    """Identity of the architecture (config and parameter names/shapes), not of the current weights."""
    spec = {
        "shape": shape.model_dump(),
        "params": [(n, list(p.shape)) for n, p in model.named_parameters()],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def encode_text(text: str | bytes) -> torch.Tensor:
    """Byte-level tokenisation: UTF-8 bytes as ids 0..255."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)
