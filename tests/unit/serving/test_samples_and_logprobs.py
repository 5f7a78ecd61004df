"""n samples per request (prompt prefilled once, KV shared), logprobs against a transformers forward, penalties,
seeds, ignore_eos, and the bounds of the new parameters."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from protocols.errors import ErrorCode, ProtocolError
from serving.engine import Engine
from serving.model import load_model
from serving.plan import SamplingSpec
from serving.request import GenerateParams
from serving.runner import kv_layout_of
from serving.sampling import apply_penalties
from tests.unit.serving.helpers import Collector, tiny_config

PROMPT = list(range(30, 70))  # 40 tokens: two full blocks of 16 and a partly filled third (copy-on-write)


def test_n4_greedy_gives_four_equal_choices_and_prefills_the_prompt_once(tmp_path: Path) -> None:
    with Engine(tiny_config(tmp_path, prefix_caching=False)) as engine:
        alone = engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=24), timeout_s=60)
        before = engine.counters()["prompt_tokens_prefilled"]
        result = engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=24, n=4), timeout_s=60)
        after = engine.counters()
    assert before == len(PROMPT)
    assert after["prompt_tokens_prefilled"] - before == len(PROMPT)  # once, not 4 times
    assert after["prompt_tokens_cached"] == 0
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert all(c.token_ids == alone.token_ids for c in result.choices)
    assert all(c.text == alone.text for c in result.choices)
    assert result.usage == {"prompt_tokens": len(PROMPT), "completion_tokens": 4 * len(alone.token_ids)}


@pytest.mark.parametrize("prompt_len", [32, 40])  # the prompt ends on a block boundary, or inside a block
def test_n4_seeded_sampling_is_reproducible_and_prefilled_once(tmp_path: Path, prompt_len: int) -> None:
    prompt = list(range(10, 10 + prompt_len))
    with Engine(tiny_config(tmp_path, prefix_caching=False)) as engine:
        params = dict(prompt_token_ids=prompt, max_new_tokens=20, n=4, temperature=1.0, seed=1234)
        first = engine.generate(GenerateParams(**params), timeout_s=60)
        second = engine.generate(GenerateParams(**params), timeout_s=60)
        other = engine.generate(GenerateParams(**{**params, "seed": 99}), timeout_s=60)
        prefilled = engine.counters()["prompt_tokens_prefilled"]
        free, total = engine.scheduler.allocator.num_free, engine.scheduler.allocator.num_blocks
    samples = [c.token_ids for c in first.choices]
    assert samples == [c.token_ids for c in second.choices]
    assert len({tuple(s) for s in samples}) == 4  # distinct streams: sample i draws from seed + i
    assert samples != [c.token_ids for c in other.choices]
    assert prefilled == 3 * prompt_len
    assert free == total  # every shared block was released exactly once


def test_n_samples_stream_their_own_stop_strings(tiny_engine: Engine) -> None:
    params = GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=30, n=3, temperature=1.0, seed=5)
    free = tiny_engine.generate(params, timeout_s=60)
    stop = free.choices[1].text[3:6]
    assert stop
    params = GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=30, n=3, temperature=1.0, seed=5, stop=[stop])
    cut = tiny_engine.generate(params, timeout_s=60)
    assert cut.choices[1].finish_reason == "stop"
    assert stop not in cut.choices[1].text and free.choices[1].text.startswith(cut.choices[1].text)
    for a, b in zip(free.choices, cut.choices, strict=True):
        assert a.text.startswith(b.text)


def test_a_sample_without_a_free_block_waits_and_recomputes(tmp_path: Path) -> None:
    per_token = kv_layout_of(load_model("tiny").hf_model.config, torch.float32).bytes_per_token()
    # Four blocks: the 40-token prompt takes three, so only one more sample gets a copy of the partial block.
    with Engine(tiny_config(tmp_path, kv_cache_bytes=4 * 16 * per_token)) as engine:
        alone = engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=6), timeout_s=60)
        result = engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=6, n=3), timeout_s=60)
        counters = engine.counters()
        blocks = engine.scheduler.allocator
        assert blocks.num_free == blocks.num_blocks == 4
    assert [c.token_ids for c in result.choices] == [alone.token_ids] * 3
    # The waiting sample found the prompt's full blocks in the prefix cache and recomputed only the rest.
    assert counters["prompt_tokens_prefilled"] + counters["prompt_tokens_cached"] == 3 * len(PROMPT)
    assert counters["prompt_tokens_cached"] >= 2 * 32


def test_cancel_ends_every_sample(tiny_engine: Engine) -> None:
    total = tiny_engine.scheduler.allocator.num_blocks
    sink = Collector()
    params = GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=900, n=3, ignore_eos=True, request_id="many")
    tiny_engine.submit(params, sink)  # ignore_eos: it runs until cancelled, not until a sample draws EOS
    deadline = time.monotonic() + 30
    while len(sink.tokens.get("many", [])) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert tiny_engine.cancel("many")
    sink.wait(["many"], 30)
    assert sink.done["many"].finish_reason == "cancelled"
    assert len(sink.done["many"].finish_reasons) == 3
    assert tiny_engine.scheduler.allocator.num_free == total
    assert not tiny_engine.scheduler.requests


@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-4), ("bfloat16", 2e-2)])
def test_logprobs_equal_log_softmax_of_a_transformers_forward(
    tmp_path: Path, tiny_embedded_dir: Path, dtype: str, tolerance: float
) -> None:
    config = tiny_config(tmp_path, model=str(tiny_embedded_dir), dtype=dtype)
    with Engine(config) as engine:
        params = GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=12, temperature=0.8, seed=3, logprobs=5)
        result = engine.generate(params, timeout_s=60)
    hf = AutoModelForCausalLM.from_pretrained(tiny_embedded_dir).float().eval()
    tokens = result.token_ids
    with torch.no_grad():
        logits = hf(torch.tensor([PROMPT + tokens])).logits[0].float()
    reference = torch.log_softmax(logits, dim=-1)[len(PROMPT) - 1 : -1]  # the row that predicted each token
    got = result.choices[0].logprobs
    assert got is not None and len(got) == len(tokens)
    for i, lp in enumerate(got):
        assert lp.token_id == tokens[i]
        assert lp.logprob == pytest.approx(reference[i, tokens[i]].item(), abs=tolerance)
        assert len(lp.top) == 5
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        for token, value in lp.top:  # each alternative's own figure, and no better token left out
            assert value == pytest.approx(reference[i, token].item(), abs=tolerance)
        assert torch.topk(reference[i], 5).values[-1].item() <= lp.top[-1][1] + tolerance


def test_penalties_change_greedy_output_and_neutral_ones_do_not(tiny_engine: Engine) -> None:
    def run(**kw: object) -> list[int]:
        return tiny_engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=30, **kw)).token_ids

    plain = run()
    assert run(presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0) == plain
    penalized = run(frequency_penalty=2.0, presence_penalty=2.0)
    assert penalized != plain
    assert len(set(penalized)) >= len(set(plain))  # penalties push towards tokens not used yet
    assert run(repetition_penalty=5.0) != plain


def test_apply_penalties_arithmetic() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0])
    spec = SamplingSpec(repetition_penalty=2.0)
    out = apply_penalties(logits, spec, ([0], [1]))
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0]
    spec = SamplingSpec(presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, spec, ([3], [2, 2, 0]))
    assert out.tolist() == pytest.approx([2.0 - 0.75, -1.0, 0.5 - 1.0, 3.0])
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0]  # the caller's row is untouched


def test_ignore_eos_generates_through_end_of_sequence(tiny_engine: Engine) -> None:
    eos = min(tiny_engine.eos_token_ids)
    prompt = [eos] * 4 + PROMPT[:4]
    stopped = tiny_engine.generate(GenerateParams(prompt_token_ids=prompt, max_new_tokens=64, temperature=5.0,
                                                  seed=0, top_k=0), timeout_s=60)  # fmt: skip
    full = tiny_engine.generate(
        GenerateParams(prompt_token_ids=prompt, max_new_tokens=64, temperature=5.0, seed=0, ignore_eos=True),
        timeout_s=60,
    )
    assert full.finish_reason == "length" and len(full.token_ids) == 64
    if stopped.finish_reason == "stop":  # eos was drawn: ignore_eos ran past it with the same draws
        assert full.token_ids[: len(stopped.token_ids)] == stopped.token_ids


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (dict(n=0), "n"),
        (dict(n=17), "n"),
        (dict(n=2.0), "n"),
        (dict(logprobs=21), "logprobs"),
        (dict(logprobs=-1), "logprobs"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(frequency_penalty=math.nan), "frequency_penalty"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=math.inf), "repetition_penalty"),
        (dict(ignore_eos="yes"), "ignore_eos"),
        (dict(request_id="a\x00b"), "request_id"),
    ],
)
def test_bad_sample_parameters_are_refused_naming_the_field(tiny_engine: Engine, params: dict, field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        tiny_engine.submit(GenerateParams(prompt_token_ids=PROMPT, **params), lambda e: None)
    assert err.value.code is ErrorCode.BAD_REQUEST
    assert err.value.field == field
    assert not tiny_engine.scheduler.requests
