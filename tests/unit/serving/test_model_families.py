"""`swarm model save NAME DIR --family F`: the embedded shape as a Mistral, Qwen2 or Qwen3 checkpoint that the
serving engine loads and that `training.model` accepts, with the byte tokenizer's EOS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.config import ServingConfig
from serving.engine import Engine
from serving.request import GenerateParams
from tests.unit.serving.test_cli import make_app
from training.config import TrainingConfig


@pytest.mark.parametrize("family", ["qwen3", "qwen2", "mistral"])
def test_model_save_family_writes_a_checkpoint_that_serves_and_trains(family: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(make_app(), ["model", "save", "tiny", str(tmp_path / "ck"), "--family", family])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == family
    with Engine(ServingConfig(model=str(tmp_path / "ck"), device="cpu")) as engine:
        out = engine.generate(GenerateParams(prompt="def ", max_new_tokens=3, ignore_eos=True))
        assert len(out.token_ids) == 3
    TrainingConfig(model=str(tmp_path / "ck"))


def test_unknown_family_exits_naming_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(make_app(), ["model", "save", "tiny", str(tmp_path / "x"), "--family", "gpt2"])
    assert result.exit_code == 2 and "--family: no family 'gpt2'" in result.output, result.output
    assert not (tmp_path / "x").exists()
