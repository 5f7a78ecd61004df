"""The serving dtype `auto` picks: measured per candidate, greedy output checked against float32's, cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serving import dtype_choice
from serving.engine import Engine
from serving.model import build_embedded_model
from tests.unit.serving.helpers import tiny_config


def test_the_fastest_candidate_whose_greedy_output_equals_float32s_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_embedded_model("tiny").hf_model
    real_greedy = dtype_choice.greedy_tokens
    speeds = {torch.float32: 3.0, torch.bfloat16: 1.0, torch.float16: 2.0}  # seconds per probe step

    def fake_step(m, vocab, device):
        return speeds[next(m.parameters()).dtype]

    def greedy(m, vocab, device):
        tokens = real_greedy(m, vocab, device)
        return [t + 1 for t in tokens] if next(m.parameters()).dtype == torch.bfloat16 else tokens

    monkeypatch.setattr(dtype_choice, "step_seconds", fake_step)
    monkeypatch.setattr(dtype_choice, "greedy_tokens", greedy)
    choice = dtype_choice.choose(model, torch.device("cpu"), key="k")
    # bfloat16 is fastest but its greedy output differs from float32's: float16 is the fastest that agrees.
    assert choice.greedy_equal == {"float32": True, "bfloat16": False, "float16": True}
    assert choice.dtype == "float16"
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_the_real_probe_compares_whole_greedy_continuations() -> None:
    model = build_embedded_model("tiny").hf_model
    tokens = dtype_choice.greedy_tokens(model, model.config.vocab_size, torch.device("cpu"))
    assert len(tokens) == dtype_choice.PROBE_NEW_TOKENS
    assert tokens == dtype_choice.greedy_tokens(model, model.config.vocab_size, torch.device("cpu"))
    assert dtype_choice.step_seconds(model, model.config.vocab_size, torch.device("cpu")) > 0


def test_auto_measures_once_and_then_serves_the_cached_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_choose = dtype_choice.choose

    def counting(*args, **kwargs):
        calls.append(1)
        return real_choose(*args, **kwargs)

    monkeypatch.setattr(dtype_choice, "choose", counting)
    config = tiny_config(tmp_path, dtype="auto")
    with Engine(config) as engine:
        first = engine.dtype_choice
        assert first is not None and str(engine.dtype) == f"torch.{first.dtype}"
        assert first.greedy_equal[first.dtype] and set(first.step_s) == {"float32", "bfloat16", "float16"}
    with Engine(config) as engine:
        assert engine.dtype_choice == first
    assert len(calls) == 1
    cached = dtype_choice.load_cached(Path(config.latency_profile_path).with_suffix(".dtype.json"), first.key)
    assert cached == first
    assert dtype_choice.load_cached(Path(config.latency_profile_path).with_suffix(".dtype.json"), "other") is None


def test_a_named_dtype_is_served_without_measuring(tmp_path: Path) -> None:
    with Engine(tiny_config(tmp_path, dtype="float32")) as engine:
        assert engine.dtype == torch.float32 and engine.dtype_choice is None


def test_a_burst_of_load_during_one_candidate_s_turn_does_not_make_it_lose(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_embedded_model("tiny").hf_model
    # float32 is the fastest, but the machine was busy during its first turn (10x slower then).
    turns = {torch.float32: [10.0, 1.0], torch.bfloat16: [2.0, 2.0], torch.float16: [3.0, 3.0]}

    def fake_step(m, vocab, device):
        return turns[next(m.parameters()).dtype].pop(0)

    monkeypatch.setattr(dtype_choice, "step_seconds", fake_step)
    choice = dtype_choice.choose(model, torch.device("cpu"), key="k")
    assert choice.step_s == {"float32": 1.0, "bfloat16": 2.0, "float16": 3.0}
    assert choice.dtype == "float32"
    assert all(not left for left in turns.values())  # every candidate timed once per pass
