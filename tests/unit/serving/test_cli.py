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


def test_generate_without_temperature_samples_as_the_model_recommends(tmp_path, monkeypatch):
    """Unset --temperature: the shipped default's recommended sampling, a checkpoint's sampling generation config,
    else greedy; an explicit temperature wins."""
    from swarm.cli import serving as cli_serving

    seen: list[dict] = []
    monkeypatch.setattr(cli_serving, "generate_local", lambda prompt, model, device, **s: seen.append(s) or _Result())
    sampling_ckpt = tmp_path / "sampling"
    sampling_ckpt.mkdir()
    sampling = {"do_sample": True, "temperature": 0.6, "top_p": 0.9}
    (sampling_ckpt / "generation_config.json").write_text(json.dumps(sampling))
    greedy_ckpt = tmp_path / "greedy"
    greedy_ckpt.mkdir()
    (greedy_ckpt / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    runner = CliRunner()
    for args in (["--model", "default"], ["--model", "default", "--temperature", "0"], ["--model", "tiny"],
                 ["--model", str(sampling_ckpt)], ["--model", str(greedy_ckpt)]):  # fmt: skip
        result = runner.invoke(make_app(), ["generate", "x", "--max-new-tokens", "3", *args])
        assert result.exit_code == 0, result.output
    assert [{k: v for k, v in s.items() if k not in ("max_new_tokens", "seed")} for s in seen] == [
        {"temperature": 0.7, "top_p": 0.9, "frequency_penalty": 0.2},
        {"temperature": 0.0},
        {},
        {"temperature": 0.6, "top_p": 0.9},
        {},
    ]
    assert all(s["max_new_tokens"] == 3 for s in seen)


class _Result:
    text, token_ids, finish_reason, timings = "", [], "length", {}
