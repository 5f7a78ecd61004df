"""The serving CLI: `generate --json` and `model save` through typer, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from swarm.cli import serving as cli_serving


def make_app() -> typer.Typer:
    app, bench, model = typer.Typer(), typer.Typer(), typer.Typer()
    app.add_typer(bench, name="bench")
    app.add_typer(model, name="model")
    cli_serving.register(app, bench, model)
    return app


def test_generate_json_prints_generated_ids_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        make_app(), ["generate", "hello", "--model", "tiny", "--max-new-tokens", "5", "--json", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) == {"text", "token_ids", "finish_reason", "timings"}
    assert 1 <= len(out["token_ids"]) <= 5
    assert out["timings"]["ttft_ms"] > 0


def test_model_save_writes_a_checkpoint_transformers_loads(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = CliRunner().invoke(make_app(), ["model", "save", "tiny", str(tmp_path / "ck")])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ck")
    tok = AutoTokenizer.from_pretrained(tmp_path / "ck")
    assert model.config.model_type == "llama"
    assert tok.decode(tok("héllo")["input_ids"]) == "héllo"


def test_bad_model_name_fails_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(make_app(), ["model", "save", "nope", str(tmp_path / "x")])
    assert result.exit_code == 2


def test_routing_bench_flags_are_checked_before_anything_runs() -> None:
    for args, message in (
        (["bench", "serve", "--refusing-peers"], "--refusing-peers applies to the routing bench"),
        (["bench", "serve", "--swarm", "1"], "--swarm needs at least 2 peers"),
    ):
        result = CliRunner().invoke(make_app(), args)
        assert result.exit_code == 2 and message in result.output, result.output
