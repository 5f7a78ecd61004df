"""Tiny Hugging Face checkpoint directories written in code for tests: a Qwen3-family model with random weights
and a byte-level BPE tokenizer trained on the test's own text (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

EOS = "<|endoftext|>"


def bpe_tokenizer(texts: list[str], *, with_eos: bool = True, vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE learnt from `texts`; like Qwen's base tokenizers it adds no BOS and pads with its EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [EOS] if with_eos else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    if not with_eos:
        return PreTrainedTokenizerFast(tokenizer_object=tok)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def save_tiny_qwen3(directory: Path, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """A two-layer Qwen3 (tied embeddings, as small Qwen models have) with random weights from `seed`."""
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
