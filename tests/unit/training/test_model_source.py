"""What training trains: serving's builder and byte tokenizer (BOS, EOS, PAD) for shapes, or a Hugging Face
checkpoint directory with its own tokenizer; documents end with EOS, PAD is never a target, checkpoints carry
what the serving engine needs, and a directory that cannot be trained is refused naming why."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import torch

from serving.model import build_byte_tokenizer, load_checkpoint
from tests.integration.tiny_checkpoints import bpe_tokenizer, save_tiny_qwen3
from training.checkpoint import load_latest
from training.config import TrainingConfig
from training.data import TokenData, load_corpus
from training.inner import InnerLoop
from training.model import load_tokenizer, load_train_model
from training.trainer import TrainingPeer

TEXTS = ["Q: What is the capital of France?\nA: Paris.", "Q: What is two plus two?\nA: Four."]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen3(tmp_path_factory.mktemp("qwen3"), bpe_tokenizer(TEXTS * 4))


def test_shapes_use_servings_builder_and_byte_tokenizer() -> None:
    built = load_train_model(TrainingConfig().model)
    tok = build_byte_tokenizer()
    assert built.model.config.vocab_size == len(tok) == 259
    assert (built.model.config.eos_token_id, built.model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert built.ignored_label() == tok.pad_token_id
    assert built.model_hash == load_train_model(TrainingConfig().model).model_hash  # same on every peer
    other = TrainingConfig.model_validate({"model": {"seed": 1}}).model
    assert load_train_model(other).model_hash != built.model_hash  # another start: never averaged together


def test_documents_end_with_eos_and_a_cut_one_does_not(tmp_path: Path) -> None:
    data = tmp_path / "ft.jsonl"
    data.write_text(json.dumps({"prompt": "ab", "completion": "c"}) + "\n" + json.dumps({"text": "xyz"}) + "\n\n")
    tok = build_byte_tokenizer()
    eos = tok.eos_token_id
    assert load_corpus(data, 1000, tok).tolist() == [97, 98, 99, eos, 120, 121, 122, eos]
    assert load_corpus(data, 5, tok).tolist() == [97, 98, 99, eos, 120, 121]  # "xyz" was cut after "xy"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not a JSON record"):
        load_corpus(bad, 1000, tok)


def test_pad_is_never_a_target() -> None:
    built = load_train_model(TrainingConfig().model)
    inner = InnerLoop(built.model, TrainingConfig(), ignored_label=built.ignored_label())
    pad, eos = built.tokenizer.pad_token_id, built.tokenizer.eos_token_id
    assert inner._labels(torch.tensor([[97, eos, pad, pad]])).tolist() == [[97, eos, -100, -100]]


def test_checkpoint_directory_trains_and_its_checkpoints_serve(qwen_dir: Path, tmp_path: Path) -> None:
    cfg = TrainingConfig.model_validate(
        {"model": str(qwen_dir), "inner_steps": 2, "total_steps": 4, "warmup_steps": 1, "batch_size": 2,
         "seq_len": 16, "checkpoint_dir": str(tmp_path / "ck"), "eval_batches": 1}
    )  # fmt: skip
    tok = load_tokenizer(cfg.model)
    assert tok.eos_token_id == tok.pad_token_id and tok.bos_token_id is None
    data = tmp_path / "ft.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in TEXTS * 20))
    tokens = load_corpus(data, 100_000, tok)
    assert int((tokens == tok.eos_token_id).sum()) == 40
    peer = TrainingPeer(cfg, TokenData(tokens, cfg.eval_fraction, cfg.seq_len), peer_id="p", shard_index=0,
                        num_shards=2)  # fmt: skip
    assert peer.inner.ignored_label is None  # PAD is EOS here: EOS stays a target
    peer.run(4)
    newest = load_latest(tmp_path / "ck")
    assert newest is not None and newest.step == 4
    served = load_checkpoint(str(newest.path))  # tied embeddings were written, config and tokenizer beside them
    assert served.hf_model.config.model_type == "qwen3" and served.tokenizer.eos_token_id == tok.eos_token_id
    live = dict(peer.inner.model.named_parameters())
    for name, param in served.hf_model.named_parameters():
        torch.testing.assert_close(param.float(), live[name].detach())
    resumed = TrainingPeer(cfg, TokenData(tokens, cfg.eval_fraction, cfg.seq_len), peer_id="p", shard_index=0,
                           num_shards=2)  # fmt: skip
    assert resumed.resume_or_join(join_timeout_s=None).startswith("resumed from")


def _model_error(model: str) -> str:
    with pytest.raises(pydantic.ValidationError) as err:
        TrainingConfig.model_validate({"model": model})
    return str(err.value)


def test_untrainable_directories_are_refused_naming_why(qwen_dir: Path, tmp_path: Path) -> None:
    assert "neither an embedded model" in _model_error(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "not a Hugging Face checkpoint: no readable config.json" in _model_error(str(tmp_path / "empty"))
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "model_type 'gpt2' in config.json is not supported" in _model_error(str(gpt2))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_bytes((qwen_dir / "config.json").read_bytes())
    assert "holds no weights" in _model_error(str(no_weights))
    no_eos = save_tiny_qwen3(tmp_path / "no-eos", bpe_tokenizer(TEXTS, with_eos=False))
    assert "its tokenizer has no EOS token (eos_token)" in _model_error(str(no_eos))
    with pytest.raises(pydantic.ValidationError, match=r"seq_len=512 exceeds model\.max_position_embeddings=256"):
        TrainingConfig(model=str(qwen_dir), seq_len=512)
    TrainingConfig(model=str(qwen_dir))
    TrainingConfig(model="tiny")
