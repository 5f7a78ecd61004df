"""The model a swarm trains and its tokenizer: a shape or an embedded model's name, built in code by serving's
builder with the byte tokenizer (BOS, EOS, PAD), or a local Hugging Face checkpoint directory (Llama, Mistral,
Qwen2, Qwen3) with its own tokenizer, to continue pre-training or fine-tune it.

Every peer that starts from the same source gets bit-identical weights and the same `model_hash` (architecture and
starting weights), so peers with different starting points never average together. `TrainModel.files` are the
config, generation config and tokenizer files that make a training checkpoint a directory the serving engine
loads as it is. This module knows nothing about peers or optimizers.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.config import ModelShape

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class TrainModel:
    """A causal LM in fp32 ready for the inner loop, its tokenizer and its identity."""

    model: torch.nn.Module
    tokenizer: Any
    model_hash: str

    def ignored_label(self) -> int | None:
        """The PAD id, never a training target; None where PAD is EOS or BOS (Qwen's base tokenizers pad with
        their end-of-text token, which the model must learn to emit)."""
        tok = self.tokenizer
        pad = tok.pad_token_id
        return None if pad is None or pad in (tok.eos_token_id, tok.bos_token_id) else int(pad)

    def files(self) -> dict[str, bytes]:
        """config.json, generation_config.json and the tokenizer's files, by name."""
        with tempfile.TemporaryDirectory() as tmp:
            self.model.config.save_pretrained(tmp)
            self.model.generation_config.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def _embedded_names() -> tuple[str, ...]:
    from serving.model import EMBEDDED_SPECS

    return tuple(EMBEDDED_SPECS)


def _read_checkpoint_config(source: str) -> dict[str, Any]:
    """config.json of checkpoint directory `source`, checked; ValueError says what is wrong."""
    from serving.model import SUPPORTED_MODEL_TYPES

    path = Path(source)
    if not path.is_dir():
        raise ValueError(
            f"{source!r} is neither an embedded model ({', '.join(_embedded_names())}) nor a checkpoint directory"
        )
    try:
        config = json.loads((path / "config.json").read_text())
    except OSError as err:
        reason = f"no readable config.json ({err.strerror})"
        raise ValueError(f"{source} is not a Hugging Face checkpoint: {reason}") from None
    except ValueError as err:
        raise ValueError(f"{source}/config.json is not JSON ({err})") from None
    if not isinstance(config, dict) or config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        got = config.get("model_type") if isinstance(config, dict) else None
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        raise ValueError(f"{source}: model_type {got!r} in config.json is not supported (supported: {supported})")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{source} holds no weights ({' or '.join(WEIGHT_FILES[::2])})")
    return config


def check_model_source(source: str) -> None:
    """Raise ValueError naming what makes `source` (an embedded name or a checkpoint directory) untrainable: not a
    checkpoint of a supported family, no weights, a tokenizer that does not load or has no EOS token."""
    if source in _embedded_names():
        return
    _read_checkpoint_config(source)
    tokenizer = load_tokenizer(source)
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"{source}: its tokenizer has no EOS token (eos_token): documents could not be ended and a trained "
            "model could never stop"
        )


def source_context_length(source: str) -> int:
    """max_position_embeddings of an embedded model or a checkpoint directory's config."""
    from serving.model import EMBEDDED_SPECS

    if source in EMBEDDED_SPECS:
        return EMBEDDED_SPECS[source].max_context_tokens
    return int(_read_checkpoint_config(source).get("max_position_embeddings") or 1 << 30)


def load_tokenizer(source: ModelShape | str) -> Any:
    """The tokenizer training data is encoded with: the byte tokenizer for models built in code, else the
    checkpoint's own (ValueError if it does not load)."""
    from serving.model import build_byte_tokenizer

    if isinstance(source, ModelShape) or source in _embedded_names():
        return build_byte_tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception as err:  # transformers raises many types for a broken tokenizer: all are bad input here
        raise ValueError(f"{source}: its tokenizer does not load ({type(err).__name__}: {err})") from None


def load_train_model(source: ModelShape | str) -> TrainModel:
    """Build or load the model `source` names, in fp32 on CPU (the inner loop moves it)."""
    from serving.model import EmbeddedSpec, build_embedded_model, build_llama, load_checkpoint

    if isinstance(source, ModelShape):
        spec = EmbeddedSpec(source.hidden_size, source.intermediate_size, source.num_layers, source.num_heads,
                            source.num_heads, source.max_position_embeddings)  # fmt: skip
        loaded = build_llama(spec, source.seed, f"swarm-train-seed{source.seed}")
    elif source in _embedded_names():
        loaded = build_embedded_model(source)
    else:
        check_model_source(source)
        loaded = load_checkpoint(source)
    model = loaded.hf_model.float()
    return TrainModel(model, loaded.tokenizer, model_hash(model, loaded.model_hash))


def model_hash(model: torch.nn.Module, start_weights_hash: str) -> str:
    """Identity of the architecture (family, vocabulary, parameter names/shapes) and of the starting weights."""
    spec = {
        "model_type": getattr(model.config, "model_type", ""),
        "vocab_size": getattr(model.config, "vocab_size", 0),
        "params": [(n, list(p.shape)) for n, p in model.named_parameters()],
        "start": start_weights_hash,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
