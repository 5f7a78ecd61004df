"""The soak bench's scoring: lost and duplicated tokens, failures left out while nobody served, memory growth,
and when every serving node was down at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swarm.bench.soak_nodes import SoakNode, all_down_during
from swarm.bench.soak_report import RequestLog, memory_growth, score_requests, token_errors


def test_token_errors_count_missing_and_extra_tokens() -> None:
    ref = [1, 2, 3, 4, 5]
    assert token_errors(ref, [1, 2, 3, 4, 5]) == (0, 0)
    assert token_errors(ref, [1, 2, 4, 5]) == (1, 0)  # a token lost at a switch
    assert token_errors(ref, [1, 2, 3, 3, 4, 5]) == (0, 1)  # a token sent twice
    assert token_errors(ref, [1, 2, 9, 4, 5]) == (1, 1)  # a wrong token: one lost, one extra
    assert token_errors(ref, []) == (5, 0)


def test_score_compares_failed_answers_with_as_much_reference_and_leaves_out_nobody_serving() -> None:
    refs = [[1, 2, 3, 4], [7, 8]]
    logs = [
        RequestLog(0, 0.0, 1.0, [1, 2, 3, 4], "ok", ["a", "a"]),
        RequestLog(1, 0.0, 1.0, [7, 7, 8], "ok", ["a", "b"]),  # resumed on b, one token repeated
        RequestLog(0, 1.0, 2.0, [1, 2], "NoPeerAvailable"),  # failed after two good tokens: nothing lost
        RequestLog(0, 1.0, 2.0, [], "NoPeerAvailable", nobody_serving=True),
        RequestLog(1, 2.0, 3.0, [], "OVERLOADED"),
    ]
    score = score_requests(logs, refs)
    assert (score["lost_tokens"], score["duplicated_tokens"], score["streamed_tokens"]) == (0, 1, 9)
    assert score["failed_by_code"] == {"NoPeerAvailable": 1, "OVERLOADED": 1}
    assert score["failed_with_no_server_up_by_code"] == {"NoPeerAvailable": 1}
    assert (score["requests"], score["completed"], score["counted_requests"]) == (5, 2, 4)
    assert score["failed_request_fraction"] == pytest.approx(2 / 4)
    assert score["resumed_on_another_peer"] == 1


def test_memory_growth_starts_after_the_warm_up() -> None:
    samples = [(0.0, 100), (10.0, 400), (20.0, 500), (30.0, 550)]
    assert memory_growth(samples, after_s=10.0) == pytest.approx(150 / 400)
    assert memory_growth(samples, after_s=25.0) is None  # one sample is no growth
    assert memory_growth([(5.0, 0), (6.0, 100), (7.0, 100)], after_s=0.0) == 0.0  # a dead read is skipped


def test_all_down_only_when_the_down_spells_overlap(tmp_path: Path) -> None:
    a, b = SoakNode("a", "serve", tmp_path, []), SoakNode("b", "serve", tmp_path, [])
    assert a.peer_id != b.peer_id and a.addr.endswith(a.peer_id)
    a.down_intervals = [(10.0, 20.0)]
    b.down_intervals = [(20.5, 30.0)]
    assert not all_down_during([a, b], 0.0, 40.0)  # one after the other: someone was always up
    b.down_intervals = [(15.0, 30.0)]
    assert all_down_during([a, b], 0.0, 40.0) and all_down_during([a, b], 16.0, 17.0)
    assert not all_down_during([a, b], 21.0, 40.0)
    a.down_since = 35.0  # down now and not yet back
    assert not all_down_during([a, b], 31.0, 40.0)
    b.down_since = 36.0
    assert all_down_during([a, b], 31.0, 40.0)


class _ExitedPeer:
    """Stands in for a LocalPeer whose process has exited with a traceback in its log."""

    def __init__(self, tmp_path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        self.proc.wait(timeout=60)
        self.log_path = tmp_path / "x-0.log"
        self.log_path.write_text("INFO up\n  | google.protobuf.message.DecodeError: Error parsing message\n  +--\n")

    def log_tail(self, chars: int) -> str:
        return self.log_path.read_text()[-chars:]


def test_a_node_that_exits_unasked_is_one_crash_with_its_error(tmp_path: Path) -> None:
    node = SoakNode("x", "serve", tmp_path, [])
    node.peer = _ExitedPeer(tmp_path)  # type: ignore[assignment]
    node.last_seen_alive = 7.0
    assert node.exited_unasked(lambda: 9.0)
    assert not node.exited_unasked(lambda: 10.0)  # recorded once
    (crash,) = node.crashes
    assert crash["returncode"] == 3 and crash["error"] == "google.protobuf.message.DecodeError: Error parsing message"
    assert 7.0 <= crash["t_s"] <= 9.0 and node.down_since == pytest.approx(crash["t_s"], abs=0.01)
    assert node.pid is None
    assert node.was_down(9.5) and not node.was_down(6.0)
