"""Engine behaviour: bad input, KV exhaustion, cancellation, sampling controls, priorities."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from protocols.errors import ErrorCode, ProtocolError
from serving.engine import Engine
from serving.request import GenerateParams
from tests.unit.serving.helpers import Collector, run_all, tiny_config

PROMPT = list(range(30, 70))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (dict(prompt=""), "prompt"),
        (dict(prompt_token_ids=[]), "prompt_token_ids"),
        (dict(prompt_token_ids=[1] * 5000), "prompt_token_ids"),
        (dict(prompt="x" * 5000), "prompt"),
        (dict(prompt_token_ids=[1, 10_000]), "prompt_token_ids"),
        (dict(prompt="hi", max_new_tokens=0), "max_new_tokens"),
        (dict(prompt="hi", max_new_tokens=-3), "max_new_tokens"),
        (dict(prompt="hi", max_new_tokens=10**9), "max_new_tokens"),
        (dict(prompt="hi", temperature=math.nan), "temperature"),
        (dict(prompt="hi", temperature=-1.0), "temperature"),
        (dict(prompt="hi", top_p=0.0), "top_p"),
        (dict(prompt="hi", top_k=-1), "top_k"),
        (dict(prompt="hi", ttft_ms=math.inf), "ttft_ms"),
        (dict(prompt="hi", stop=[""]), "stop"),
        (dict(prompt="hi", prompt_token_ids=[1]), "prompt"),
    ],
)
def test_bad_input_is_refused_naming_the_field(tiny_engine: Engine, params: dict, field: str) -> None:
    with pytest.raises(ProtocolError) as err:
        tiny_engine.submit(GenerateParams(**params), lambda e: None)
    assert err.value.code is ErrorCode.BAD_REQUEST
    assert err.value.field == field


def test_unknown_sampling_parameter_is_refused() -> None:
    with pytest.raises(ProtocolError) as err:
        GenerateParams.from_dict({"prompt": "hi", "min_p": 0.1})
    assert err.value.code is ErrorCode.BAD_REQUEST and err.value.field == "min_p"


def test_bad_requests_do_not_disturb_the_batch(tiny_engine: Engine) -> None:
    alone = tiny_engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=40))
    sink = Collector()
    tiny_engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=40, request_id="good"), sink)
    refused = 0
    for bad in (dict(prompt=""), dict(prompt="a", temperature=math.nan), dict(prompt="a", max_new_tokens=0)):
        with pytest.raises(ProtocolError):
            tiny_engine.submit(GenerateParams(**bad), sink)
        refused += 1
    sink.wait(["good"], 30)
    assert refused == 3
    assert sink.tokens["good"] == alone.token_ids
    assert sink.done["good"].finish_reason == alone.finish_reason


@pytest.mark.timeout(60)
def test_kv_exhaustion_preempts_and_results_stay_exact(tmp_path: Path) -> None:
    prompts = [[(7 * i + j) % 250 for j in range(40 + 5 * i)] for i in range(6)]
    params = lambda: [  # noqa: E731
        GenerateParams(prompt_token_ids=p, max_new_tokens=30, request_id=f"r{i}") for i, p in enumerate(prompts)
    ]
    with Engine(tiny_config(tmp_path / "big")) as roomy:
        expected = run_all(roomy, params())
    # 10 blocks of 16 tokens hold two of these requests at most: the rest must wait or be preempted.
    small = tiny_config(tmp_path / "small", kv_cache_bytes=10 * 16 * roomy.runner.layout.bytes_per_token())
    with Engine(small) as tight:
        assert tight.runner.kv.num_blocks == 10
        got = run_all(tight, params())
        assert tight.scheduler.num_preemptions > 0
        assert tight.scheduler.allocator.num_free == 10
    for i in range(len(prompts)):
        assert got.tokens[f"r{i}"] == expected.tokens[f"r{i}"]
        assert got.done[f"r{i}"].finish_reason == expected.done[f"r{i}"].finish_reason


def test_request_larger_than_the_whole_cache_is_refused(tmp_path: Path) -> None:
    with Engine(tiny_config(tmp_path, kv_cache_bytes=4 * 16 * 512)) as engine:
        assert engine.max_context == 64
        with pytest.raises(ProtocolError) as err:
            engine.submit(GenerateParams(prompt_token_ids=[1] * 80), lambda e: None)
        assert err.value.field == "prompt_token_ids"
        result = engine.generate(GenerateParams(prompt_token_ids=[1] * 60, max_new_tokens=50))
        assert result.finish_reason == "length" and len(result.token_ids) == 4


def test_cancel_frees_blocks_at_once(tiny_engine: Engine) -> None:
    total = tiny_engine.scheduler.allocator.num_blocks
    sink = Collector()
    tiny_engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=900, request_id="long"), sink)
    deadline = time.monotonic() + 60
    while len(sink.tokens.get("long", [])) < 3 and time.monotonic() < deadline:
        time.sleep(0.002)
    assert tiny_engine.cancel("long")
    assert tiny_engine.scheduler.allocator.num_free == total
    assert sink.done["long"].finish_reason == "cancelled"
    assert 3 <= sink.done["long"].usage["completion_tokens"] < 900
    assert not tiny_engine.cancel("long")


def test_stop_engine_cancels_in_flight_requests(tmp_path: Path) -> None:
    engine = Engine(tiny_config(tmp_path))
    engine.start()
    sink = Collector()
    engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=900, request_id="a"), sink)
    engine.stop(reason="shutting down")
    assert sink.done["a"].finish_reason == "cancelled"
    assert sink.done["a"].error == "shutting down"


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_engine: Engine) -> None:
    def run(**kw: object) -> list[int]:
        return tiny_engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=30, **kw)).token_ids

    greedy = run()
    assert run(temperature=1.0, seed=3) == run(temperature=1.0, seed=3)
    assert run(temperature=1.0, seed=3) != run(temperature=1.0, seed=4)
    assert run(temperature=0.7, top_k=1, seed=5) == greedy
    assert run(temperature=1.0, top_p=1e-6, seed=6) == greedy


def test_stop_string_ends_the_request_and_is_cut_from_text(tiny_engine: Engine) -> None:
    prompt = "The quick brown fox"
    full = tiny_engine.generate(GenerateParams(prompt=prompt, max_new_tokens=40))
    text = full.text
    assert len(text) > 6
    stop = text[3:5]
    cut = tiny_engine.generate(GenerateParams(prompt=prompt, max_new_tokens=40, stop=[stop]))
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.index(stop)]
    assert len(cut.token_ids) < len(full.token_ids)


def test_higher_priority_runs_first(tmp_path: Path) -> None:
    with Engine(tiny_config(tmp_path, max_running_requests=1)) as engine:
        entered, release = threading.Event(), threading.Event()
        execute = engine.runner.execute

        def held_execute(output):  # type: ignore[no-untyped-def]
            if output.chunks and not release.is_set():
                entered.set()
                release.wait(60)  # hold the first step so every request below is queued behind it, however fast
            return execute(output)

        engine.runner.execute = held_execute
        sink = Collector()
        engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=60, request_id="first"), sink)
        assert entered.wait(30)
        for i in range(3):
            engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=5, request_id=f"low{i}"), sink)
        engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=5, priority=5, request_id="high"), sink)
        release.set()
        sink.wait(["first", "high", "low0", "low1", "low2"], 60)
    # One request runs at a time, so they finish in the order they were scheduled.
    assert list(sink.done) == ["first", "high", "low0", "low1", "low2"]


def test_bfloat16_engine_runs_and_is_deterministic(tmp_path: Path) -> None:
    with Engine(tiny_config(tmp_path, dtype="bfloat16")) as engine:
        assert engine.runner.kv.keys[0].dtype.is_floating_point and str(engine.dtype) == "torch.bfloat16"
        first = engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=20))
        again = engine.generate(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=20))
    assert first.token_ids == again.token_ids
    assert 1 <= len(first.token_ids) <= 20
