"""`swarm join --roles train` with a `training.model` that cannot be trained (not a checkpoint of a supported
family, or a tokenizer without EOS): a non-zero exit naming the field and why, before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from swarm.cli import node as cli_node
from tests.integration.tiny_checkpoints import bpe_tokenizer, save_tiny_qwen3

pytestmark = [pytest.mark.timeout(180)]

JOIN = ["join", "--roles", "train", "--listen", "/ip4/127.0.0.1/tcp/0"]


def join_app() -> typer.Typer:
    app, bench = typer.Typer(), typer.Typer()
    cli_node.register(app, bench)
    return app


def test_a_tokenizer_without_eos_exits_naming_the_field(tmp_path: Path) -> None:
    no_eos = save_tiny_qwen3(tmp_path / "no-eos", bpe_tokenizer(["Q: a?\nA: b."], with_eos=False))
    cmd = [sys.executable, "-m", "swarm", *JOIN, "--set", f"training.model={no_eos}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "training.model:" in result.stderr and "its tokenizer has no EOS token (eos_token)" in result.stderr
    assert "Traceback" not in result.stderr


def test_directories_that_are_no_supported_checkpoint_exit_naming_why(tmp_path: Path) -> None:
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "empty").mkdir()
    for model, why in [
        (tmp_path / "missing", "nor a checkpoint directory"),
        (tmp_path / "empty", "is not a Hugging Face checkpoint: no readable config.json"),
        (gpt2, "model_type 'gpt2' in config.json is not supported (supported: llama, mistral, qwen2, qwen3)"),
    ]:
        result = CliRunner().invoke(join_app(), [*JOIN, "--set", f"training.model={model}"])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())  # the console wraps long lines
        assert "training.model:" in text and why in text, text
