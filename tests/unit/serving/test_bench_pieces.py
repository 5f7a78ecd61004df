"""Serving bench arithmetic: workloads, replayed sequential service, summaries, the capacity search."""

from __future__ import annotations

import math

import pytest

from serving.bench_capacity import (
    FIRST_STEP_DOWN,
    MAX_HALVINGS,
    TARGET_ATTAINMENT,
    SystemSearch,
    capacity_search,
    misses_to_fail,
)
from serving.bench_drivers import ServiceTime, replay_sequential, run_engine_trace, ttft_misses
from serving.bench_workload import LONG_PROMPT, RequestRecord, make_requests, percentiles, summarize, ttft_prediction
from serving.errors import OverloadedError


def test_requests_are_seeded_and_rate_only_scales_arrivals() -> None:
    a = make_requests(LONG_PROMPT, 20, 2.0, seed=3, vocab=256)
    b = make_requests(LONG_PROMPT, 20, 4.0, seed=3, vocab=256)
    assert [r.prompt_ids for r in a] == [r.prompt_ids for r in b]
    assert [r.max_new_tokens for r in a] == [r.max_new_tokens for r in b]
    assert all(math.isclose(x.arrival_s, 2 * y.arrival_s) for x, y in zip(a, b, strict=True))
    lo, hi = LONG_PROMPT.prompt_range
    assert all(lo <= len(r.prompt_ids) <= hi for r in a)
    assert all(r.arrival_s == 0.0 for r in make_requests(LONG_PROMPT, 5, math.inf, seed=3, vocab=256))
    longer = make_requests(LONG_PROMPT, 50, 2.0, seed=3, vocab=256)  # a longer probe extends the same lengths
    assert [(len(r.prompt_ids), r.max_new_tokens) for r in longer[:20]] == [
        (len(r.prompt_ids), r.max_new_tokens) for r in a
    ]


def test_replay_queues_a_one_at_a_time_server() -> None:
    reqs = make_requests(LONG_PROMPT, 3, math.inf, seed=0, vocab=256)  # all arrive at t=0
    services = [ServiceTime(0.1, [0.1, 0.2, 0.3]) for _ in reqs]
    records = replay_sequential(services, reqs)
    assert [round(r.ttft_s, 6) for r in records] == [0.1, 0.4, 0.7]  # each waits for the previous one
    assert all(math.isclose(r.tpot_s, 0.1) for r in records)


def test_summary_counts_refusals_and_abandoned_answers_as_misses() -> None:
    ok = RequestRecord(ttft_s=0.1, token_times_s=[1.0, 1.01, 1.02], num_tokens=3)
    slow = RequestRecord(ttft_s=0.1, token_times_s=[1.0, 1.5, 2.0], num_tokens=3)
    refused = RequestRecord(refused=True)
    cut_short = RequestRecord(ttft_s=0.1, token_times_s=[1.0, 3.0], num_tokens=2, abandoned=True)
    summary = summarize([ok, slow, refused, cut_short], wall_s=2.0, ttft_slo_s=0.2, tpot_slo_s=0.05)
    assert summary["slo_attainment"] == pytest.approx(1 / 4)
    assert summary["refused"] == 1 and summary["abandoned"] == 1 and summary["output_tokens"] == 8
    assert summary["output_tok_s"] == pytest.approx(4.0)
    assert summary["tpot_ms"]["p99"] == pytest.approx(500.0)  # an abandoned answer's gaps stay out of them
    assert percentiles([1.0, 2.0, 3.0, 4.0], scale=1.0) == {"p50": 2.0, "p90": 4.0, "p99": 4.0}


def test_tpot_slo_counts_stalls_not_only_the_mean() -> None:
    steady = [1.0 + 0.01 * i for i in range(21)]  # 20 gaps of 10 ms
    one_hiccup = [*steady[:10], *(t + 0.03 for t in steady[10:])]  # one 40 ms gap: forgiven
    stalled = [*steady[:5], *(t + 0.03 for t in steady[5:15]), *(t + 0.06 for t in steady[15:])]  # two stalls
    records = [RequestRecord(ttft_s=0.1, token_times_s=t, num_tokens=len(t)) for t in (steady, one_hiccup, stalled)]
    assert [r.tpot_s < 0.02 for r in records] == [True, True, True]  # every mean is within a 20 ms target
    assert [r.meets(0.2, 0.02) for r in records] == [True, True, False]
    assert [r.meets(0.2, 0.02, stalls=False) for r in records] == [True, True, True]
    summary = summarize(records, wall_s=1.0, ttft_slo_s=0.2, tpot_slo_s=0.02)
    assert summary["slo_attainment"] == pytest.approx(2 / 3)
    assert summary["slo_attainment_mean_tpot"] == pytest.approx(1.0)


@pytest.mark.parametrize("true_capacity", [0.3, 1.7, 9.0])
def test_capacity_search_brackets_then_bisects_to_within_ten_percent(true_capacity: float) -> None:
    def probe(rate: float) -> float:
        return 1.0 if rate <= true_capacity else TARGET_ATTAINMENT / 2

    found, points = capacity_search(probe, start_rate=1.0, probes=20)
    assert found <= true_capacity
    higher_failing = min(rate for rate, attained in points if attained < TARGET_ATTAINMENT)
    assert higher_failing <= found * 1.1  # the bracket [found, first failing rate above it] is within 10%
    assert found >= true_capacity / 1.1
    assert len(points) < 20  # it stopped once the bracket was tight, not at the probe bound


def test_capacity_is_zero_when_nothing_passes_and_the_search_gives_up() -> None:
    found, points = capacity_search(lambda rate: 0.0, start_rate=1.0, probes=30)
    assert found == 0.0
    assert len(points) == MAX_HALVINGS + 1
    assert points[-1][0] == pytest.approx(1.0 / (FIRST_STEP_DOWN * 2 ** (MAX_HALVINGS - 1)))


def _definitions(stall_capacity: float, mean_capacity: float):
    def summary(rate: float) -> dict:
        return {
            "slo_attainment_with_stalls": 1.0 if rate <= stall_capacity else 0.5,
            "slo_attainment_mean_tpot": 1.0 if rate <= mean_capacity else 0.5,
        }

    return summary


@pytest.mark.parametrize(("stalls", "mean"), [(2.0, 2.0), (0.6, 3.0)])
def test_system_search_finds_both_definitions_and_shares_probes(stalls: float, mean: float) -> None:
    search = SystemSearch(start_rate=1.0, max_probes=30)
    probed = []
    while (rate := search.next_rate()) is not None:
        probed.append(rate)
        search.record(rate, _definitions(stalls, mean)(rate))
    caps = search.capacities()
    assert stalls / 1.1 <= caps["with_stalls"] <= stalls
    assert mean / 1.1 <= caps["mean_tpot"] <= mean
    assert len(probed) - len(set(probed)) <= 2  # only the failures closing the brackets were probed twice
    if stalls == mean:  # the same verdicts: the second search runs on the first one's probes alone
        alone = capacity_search(lambda r: _definitions(stalls, mean)(r)["slo_attainment_with_stalls"], 1.0, 30)
        assert len(probed) == len(alone[1])


def test_system_search_stops_at_its_probe_bound() -> None:
    search = SystemSearch(start_rate=1.0, max_probes=3)
    count = 0
    while (rate := search.next_rate()) is not None:
        count += 1
        search.record(rate, _definitions(0.77, 5.0)(rate))
    assert count == 3
    assert search.capacities()["with_stalls"] == pytest.approx(2**-0.5)  # 1.0 failed, 0.5 and 0.71 passed


def test_ttft_prediction_reports_signed_and_relative_error() -> None:
    records = [
        RequestRecord(ttft_s=0.1, predicted_ttft_s=0.2),  # pessimistic by 100 ms
        RequestRecord(ttft_s=0.2, predicted_ttft_s=0.1),  # optimistic by 100 ms
        RequestRecord(ttft_s=0.1, predicted_ttft_s=None),  # no prediction (FCFS): not counted
    ]
    report = ttft_prediction(records)
    assert report["requests"] == 2
    assert report["mean_error_ms"] == pytest.approx(0.0)
    assert report["mean_abs_relative_error"] == pytest.approx((1.0 + 0.5) / 2)
    assert report["median_predicted_over_achieved"] == pytest.approx((2.0 + 0.5) / 2)
    assert ttft_prediction(records[2:]) == {"requests": 0}


def test_a_failure_that_a_higher_pass_contradicts_is_noise() -> None:
    search = SystemSearch(start_rate=1.0, max_probes=30)
    # a burst of other work on the machine fails the first probe; the system really passes up to 3 req/s
    first = search.next_rate()
    search.record(first, _definitions(0.0, 0.0)(first))
    probed = [first]
    while (rate := search.next_rate()) is not None:
        probed.append(rate)
        search.record(rate, _definitions(3.0, 3.0)(rate))
    assert 3.0 / 1.1 <= search.capacities()["with_stalls"] <= 3.0
    assert max(probed) > 3.0  # the search went back above the rate that failed by accident


def test_a_bounded_search_probes_nothing_below_its_floor() -> None:
    search = SystemSearch(start_rate=1.0, max_probes=30, min_rate=0.3)
    rates = []
    while (rate := search.next_rate()) is not None:
        rates.append(rate)
        search.record(rate, _definitions(0.1, 0.1)(rate))
    assert min(rates) == pytest.approx(0.3)  # 1, 0.71, 0.35, then the floor itself rather than 0.18
    assert rates == sorted(rates, reverse=True) and len(rates) == 4
    assert search.capacities() == {"with_stalls": 0.0, "mean_tpot": 0.0}


class _RefusingEngine:
    """An engine that refuses every request (SLO admission at a rate far over capacity)."""

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, params, sink) -> None:
        self.submitted += 1
        raise OverloadedError("over capacity", retry_after_ms=10)

    def cancel(self, request_id: str, reason: str) -> bool:
        return False


def test_misses_to_fail_is_the_first_count_that_sinks_attainment_below_target() -> None:
    for n in (10, 24, 30, 41):
        m = misses_to_fail(n)
        assert (n - m) / n < TARGET_ATTAINMENT <= (n - m + 1) / n


def test_a_trace_stops_once_it_has_failed_and_what_it_did_not_finish_is_a_miss() -> None:
    engine = _RefusingEngine()
    reqs = make_requests(LONG_PROMPT, 24, 20.0, seed=0, vocab=256)
    give_up = misses_to_fail(len(reqs))
    records, _ = run_engine_trace(engine, reqs, 0.5, 0.05, timeout_s=60.0, give_up_after=give_up)
    assert engine.submitted == give_up  # nothing was sent after the third refusal
    assert sum(r.refused for r in records) == give_up
    assert all(r.abandoned for r in records[give_up:])
    summary = summarize(records, 1.0, 0.5, 0.05)
    assert summary["slo_attainment_mean_tpot"] == 0.0 and summary["abandoned"] == len(reqs) - give_up
    assert ttft_misses(records, len(reqs), 0.5, now=0.0) == give_up  # unsent requests are not TTFT misses


def test_a_noisy_search_under_one_definition_leaves_probes_for_the_other() -> None:
    # Under stalls this system's verdicts flip between probes at the same rates (a shared machine), which reopens
    # that search's bracket again and again; under the mean alone it passes up to 4.5 req/s.
    def run(max_probes: int, max_per_definition: int | None) -> SystemSearch:
        script = {2.74: [0.71, 0.75], 1.94: [0.83, 0.92], 3.88: [0.66], 2.3: [0.71], 2.11: [0.79, 0.88]}
        search = SystemSearch(2.74, max_probes, max_per_definition=max_per_definition)
        while (rate := search.next_rate()) is not None:
            verdicts = script.get(round(rate, 2), [])
            stalls = verdicts.pop(0) if verdicts else (1.0 if rate <= 1.9 else 0.5)
            search.record(rate, {"slo_attainment_with_stalls": stalls, "slo_attainment_mean_tpot": float(rate <= 4.5)})
        return search

    shared = run(11, None)
    assert shared.asked == {"with_stalls": 11, "mean_tpot": 0}  # the stall search spent every probe
    assert shared.brackets()["mean_tpot"][1] is None  # the mean-TPOT capacity is only a lower bound
    bounded = run(20, 11)
    assert bounded.asked["with_stalls"] == 11 and bounded.asked["mean_tpot"] > 0
    lo, hi = bounded.brackets()["mean_tpot"]
    assert 4.5 / 1.1 <= lo <= 4.5 < hi <= lo * 1.1  # its bracket closed on the probes left to it
