"""Scoring of the soak bench: streamed answers against greedy references, failures by code, memory growth.

Pure functions over what the run recorded; they know nothing about processes or the network.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RequestLog:
    """One streamed request: when it ran, the tokens it got, and how it ended ("ok" or an error code)."""

    prompt_index: int
    start_s: float
    end_s: float = 0.0
    token_ids: list[int] = field(default_factory=list)
    outcome: str = "ok"
    peers: list[str] = field(default_factory=list)
    nobody_serving: bool = False  # every serving node was down at one moment while it ran


def token_errors(reference: list[int], answer: list[int]) -> tuple[int, int]:
    """(lost, duplicated): reference tokens missing from `answer`, and tokens of `answer` that are extra or
    repeated, from the smallest edit between the two (a replaced token counts as one lost and one extra)."""
    lost = extra = 0
    matcher = difflib.SequenceMatcher(a=reference, b=answer, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op in ("delete", "replace"):
            lost += i2 - i1
        if op in ("insert", "replace"):
            extra += j2 - j1
    return lost, extra


def score_requests(logs: list[RequestLog], references: list[list[int]]) -> dict:
    """Counts of requests and tokens. A completed answer is compared with the whole reference; a failed one,
    whose answer stopped early, with as much of the reference as it got tokens. A failure while every serving
    node was down is not the swarm's to avoid: it is counted apart and left out of the failed fraction."""
    lost = duplicated = streamed = 0
    failed: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    for log in logs:
        ref = references[log.prompt_index]
        if log.outcome != "ok":
            ref = ref[: len(log.token_ids)]
            (excluded if log.nobody_serving else failed)[log.outcome] += 1
        missing, extra = token_errors(ref, log.token_ids)
        lost, duplicated, streamed = lost + missing, duplicated + extra, streamed + len(log.token_ids)
    counted = len(logs) - sum(excluded.values())
    return {
        "requests": len(logs),
        "completed": sum(1 for log in logs if log.outcome == "ok"),
        "failed_by_code": dict(failed),
        "failed_with_no_server_up_by_code": dict(excluded),
        "resumed_on_another_peer": sum(1 for log in logs if len(set(log.peers)) > 1),
        "streamed_tokens": streamed,
        "lost_tokens": lost,
        "duplicated_tokens": duplicated,
        "counted_requests": counted,
        "failed_request_fraction": sum(failed.values()) / counted if counted else 0.0,
    }


def memory_growth(samples: list[tuple[float, int]], after_s: float) -> float | None:
    """(last - first after `after_s`) / first after `after_s`, over (time, bytes) samples of one process tree;
    None without two samples after `after_s`."""
    later = [rss for t, rss in samples if t >= after_s and rss > 0]
    if len(later) < 2:
        return None
    return (later[-1] - later[0]) / later[0]
