"""Two real averaging processes on 127.0.0.1 for tests: the second bootstrapped from the first, and one round run
by both at once from threads (as two trainers would)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from comms.averaging import AveragingError, AveragingResult, AveragingSettings, HivemindAverager


@contextmanager
def started_pair(
    settings: Callable[[tuple[str, ...]], AveragingSettings], shapes: list[tuple[int, ...]], model_hash: str = "h"
) -> Iterator[list[HivemindAverager]]:
    """`settings(initial_peers)` for each; both are closed on the way out, even after a failed start."""
    made: list[HivemindAverager] = []
    try:
        made.append(HivemindAverager(settings(()), shapes, model_hash))
        made[0].start()
        made.append(HivemindAverager(settings(tuple(made[0].visible_maddrs)), shapes, model_hash))
        made[1].start()
        yield made
    finally:
        for av in made:
            av.close()


def step_both(
    pair: list[HivemindAverager], data: list[torch.Tensor], round_index: int = 0, per_peer: list[dict] | None = None
) -> list[AveragingResult | Exception]:
    """One round of both peers at once: peer i contributes `data[i]` with the step arguments `per_peer[i]` (weight,
    pace...); an AveragingError is returned, not raised."""
    out: list[AveragingResult | Exception] = [RuntimeError("not run")] * 2
    extra = per_peer or [{}, {}]

    def run(i: int) -> None:
        try:
            out[i] = pair[i].step([data[i]], round_index=round_index, timeout_s=20.0, **extra[i])
        except AveragingError as err:
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out
