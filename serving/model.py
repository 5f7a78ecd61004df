"""Models the engine serves: the embedded default built in code, or a local Hugging Face checkpoint directory.

The embedded model is a small Llama-architecture network with a byte-level tokenizer; its weights come from a
seed, so every node derives the same weights and the same hash without downloading anything. This module knows
how to build, save, load and hash models; it knows nothing about batching, KV caches or scheduling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from protocols.errors import ErrorCode, ProtocolError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def resolve_device(name: str) -> torch.device:
    """The device a role runs on, for serving and training alike: `auto` is the current CUDA device when there is
    one, else the CPU; `cuda` the current CUDA device; any other name (`cpu`, `cuda:1`) that device, as named."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if name == "auto":
        return torch.device("cpu")
    return torch.device(name)


@dataclass(frozen=True)
class EmbeddedSpec:
    """Shape of an embedded model. `default` serves (with the shipped weights); `default-random` is the same
    network with its seeded weights (benches and tests); `tiny` keeps tests fast."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_context_tokens: int


EMBEDDED_SPECS: dict[str, EmbeddedSpec] = {
    "default": EmbeddedSpec(384, 1024, 6, 6, 2, 4096),
    "default-random": EmbeddedSpec(384, 1024, 6, 6, 2, 4096),
    "tiny": EmbeddedSpec(64, 128, 2, 4, 2, 1024),
}


WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_WEIGHTS = {"default": "default.safetensors"}  # embedded models served with trained weights

# Sampling a model recommends for callers that do not choose their own (as a checkpoint's generation_config.json
# does). The shipped default is a small byte-level model: its single most likely byte after an indent is yet another
# space, so greedy decoding runs into whitespace; sampling with a light frequency penalty writes its Python.
RECOMMENDED_SAMPLING: dict[str, dict[str, float]] = {
    "default": {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.2},
}
GENERATION_CONFIG_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty")


@dataclass
class LoadedModel:
    """A causal LM ready for the runner, with its tokenizer and identity."""

    hf_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    model_id: str
    model_hash: str


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: ids 0-255 are the bytes, then BOS, EOS and PAD."""
    vocab = {ch: byte for byte, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([BOS, EOS, PAD])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD)


def build_embedded_model(name: str = "default", seed: int = 0, family: str = "llama") -> LoadedModel:
    """Build the embedded model `name`: with the weights the package ships for it (`default`, a Llama; `seed`
    unused), else with weights drawn from `seed` (same on every machine); `family` other than llama gives a network
    of that family with the same shape (to try a family's checkpoints without one)."""
    if name not in EMBEDDED_SPECS:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no embedded model {name!r}", field="model")
    if name in SHIPPED_WEIGHTS and family == "llama":
        return _load_shipped(name)
    suffix = "" if family == "llama" else f"-{family}"
    return build_in_code(EMBEDDED_SPECS[name], seed, f"swarm-embedded-{name}{suffix}-seed{seed}", family)


def _load_shipped(name: str) -> LoadedModel:
    """The embedded network with the weights a swarm of ours trained (`swarm model train-default`), stored fp16."""
    from safetensors.torch import load_file

    path = WEIGHTS_DIR / SHIPPED_WEIGHTS[name]
    if not path.is_file():
        raise ProtocolError(ErrorCode.NOT_FOUND, f"the embedded {name!r} model's weights ({path}) are missing: "
                            f"reinstall the package, or use {name}-random (seeded weights)", field="model")  # fmt: skip
    loaded = build_in_code(EMBEDDED_SPECS[name], 0, f"swarm-embedded-{name}")
    weights = {key: t.to(torch.float32) for key, t in load_file(str(path)).items()}
    loaded.hf_model.load_state_dict(weights, strict=True)
    loaded.hf_model.eval()
    return LoadedModel(loaded.hf_model, loaded.tokenizer, loaded.model_id, weights_hash(loaded.hf_model))


def _family_config(family: str, spec: EmbeddedSpec, **common: Any) -> PretrainedConfig:
    """The transformers config of `family` for `spec`'s shape, without sliding windows (full attention)."""
    if family == "llama":
        return LlamaConfig(**common)
    if family == "mistral":
        return MistralConfig(sliding_window=None, **common)
    if family == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    if family == "qwen3":
        return Qwen3Config(head_dim=spec.hidden_size // spec.num_heads, use_sliding_window=False, **common)
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    raise ProtocolError(ErrorCode.BAD_REQUEST, f"no family {family!r} (have: {supported})", field="family")


def build_in_code(spec: EmbeddedSpec, seed: int, model_id: str, family: str = "llama") -> LoadedModel:
    """The one builder of in-code models (serving's embedded ones and training's shapes): a network of `spec`'s
    shape (a Llama unless `family` says otherwise) with the byte tokenizer (BOS, EOS and PAD set in its config),
    weights drawn from `seed`."""
    tokenizer = build_byte_tokenizer()
    config = _family_config(
        family,
        spec,
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_context_tokens,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, param in sorted(model.named_parameters()):
            if pname.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.04)
        model.model.rotary_emb.__init__(config)  # buffers were on meta: recompute inv_freq on CPU
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, model_id, weights_hash(model))


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over parameter names, dtypes, shapes and bytes, in name order: stable across processes."""
    digest = hashlib.sha256()
    for pname, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(json.dumps([pname, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def load_checkpoint(path: str) -> LoadedModel:
    """Load a local HF checkpoint directory (Llama, Mistral, Qwen2, Qwen3) and its tokenizer."""
    ckpt = Path(path)
    if not (ckpt / "config.json").is_file():
        raise ProtocolError(ErrorCode.NOT_FOUND, f"{path} is not a checkpoint directory", field="model")
    config = AutoConfig.from_pretrained(ckpt)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"model type {config.model_type!r} not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})",
            field="model",
        )
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype="auto")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    return LoadedModel(model, tokenizer, ckpt.resolve().name, weights_hash(model))


def load_model(name_or_path: str, seed: int = 0) -> LoadedModel:
    """`default` / `default-random` / `tiny` build the embedded model; anything else is a checkpoint directory."""
    if name_or_path in EMBEDDED_SPECS:
        return build_embedded_model(name_or_path, seed)
    return load_checkpoint(name_or_path)


def recommended_sampling(name_or_path: str) -> dict[str, float]:
    """The sampling `name_or_path` recommends: the embedded table, else the checkpoint's generation_config.json
    (its temperature, top_k, top_p and repetition_penalty when it samples); {} means greedy."""
    if name_or_path in EMBEDDED_SPECS:
        return dict(RECOMMENDED_SAMPLING.get(name_or_path, {}))
    path = Path(name_or_path) / "generation_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or not config.get("do_sample"):
        return {}
    return {k: float(config[k]) for k in GENERATION_CONFIG_KEYS if isinstance(config.get(k), int | float)}


def save_model(loaded: LoadedModel, directory: str | Path) -> Path:
    """Write a standard checkpoint dir (config.json, model.safetensors, tokenizer files)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    loaded.hf_model.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
    return out
