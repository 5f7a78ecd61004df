"""What the engine records for /metrics: TTFT, inter-token, TPOT and end-to-end latency per request, tokens,
finished requests by reason, refusals by code; histogram buckets in Prometheus' cumulative form."""

from __future__ import annotations

import pytest

from protocols.errors import ProtocolError
from serving.engine import Engine
from serving.request import GenerateParams
from serving.stats import TTFT_BUCKETS_S, Histogram
from tests.unit.serving.helpers import Collector, run_all

PROMPT = list(range(30, 50))


def test_histogram_counts_each_value_in_its_bucket_cumulatively() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        hist.observe(value)
    assert hist.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]  # a bound is inclusive, as `le` says
    assert hist.count == 4 and hist.total == pytest.approx(3.65)
    assert len(Histogram(TTFT_BUCKETS_S).counts) == len(TTFT_BUCKETS_S) + 1


def test_engine_records_every_request_token_and_refusal(tiny_engine: Engine) -> None:
    new_tokens = 6
    ids = [f"r{i}" for i in range(3)]
    params = [GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=new_tokens, ignore_eos=True, request_id=r)
              for r in ids]  # fmt: skip
    sink = run_all(tiny_engine, params)
    with pytest.raises(ProtocolError):
        tiny_engine.submit(GenerateParams(prompt_token_ids=[]), sink)

    snap = tiny_engine.stats.snapshot()
    assert snap.ttft.count == 3
    assert snap.generation_tokens == 3 * new_tokens
    assert snap.inter_token.count == 3 * (new_tokens - 1)  # one gap per token after the first
    assert snap.tpot.count == 3 and snap.e2e.count == 3
    assert snap.prompt_tokens == 3 * len(PROMPT)
    assert snap.finished == {"length": 3}
    assert snap.refused == {"BAD_REQUEST": 1}
    # The figures agree with what each request's done event reported.
    ttft_s = sum(sink.done[r].timings["ttft_ms"] for r in ids) / 1000
    assert snap.ttft.total == pytest.approx(ttft_s, rel=1e-6)


def test_cancelled_request_is_counted_as_cancelled(tiny_engine: Engine) -> None:
    sink = Collector()
    tiny_engine.submit(GenerateParams(prompt_token_ids=PROMPT, max_new_tokens=500, request_id="long"), sink)
    assert tiny_engine.cancel("long")
    assert tiny_engine.stats.snapshot().finished == {"cancelled": 1}
