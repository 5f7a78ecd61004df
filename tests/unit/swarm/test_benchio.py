"""The benches' progress bar: one step per message, a total that grows rather than overflows, ETA shown."""

from __future__ import annotations

import io

from rich.console import Console

from swarm.bench.benchio import BenchProgress


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system=None, width=120), out


def test_each_message_completes_the_step_before() -> None:
    console, out = _console()
    with BenchProgress("comms bench", 4, console) as progress:
        progress("bulk 1/2")
        assert progress.steps == (0, 4)
        progress("bulk 2/2")
        progress("gossip")
        assert progress.steps == (2, 4)
        progress.advance_to(30, 100, "messages")
    assert progress.steps == (4, 4)  # a bench that ends completes its bar
    text = out.getvalue()
    assert "comms bench done" in text and "4/4" in text and "ETA" in text


def test_more_steps_than_expected_grow_the_total() -> None:
    console, _ = _console()
    with BenchProgress("routing bench", 2, console) as progress:
        for i in range(5):
            progress(f"pass {i}")
        done, total = progress.steps
        assert done == 4 and total > done


def test_a_failed_bench_is_not_shown_complete() -> None:
    console, _ = _console()
    progress = BenchProgress("train bench", 6, console)
    try:
        with progress:
            progress("warm start")
            progress("ddp")
            raise RuntimeError("peer died")
    except RuntimeError:
        pass
    assert progress.steps == (1, 6)
