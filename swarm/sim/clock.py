"""The simulator's virtual clock: a heap of timed callbacks, run in time order, deterministic for a given seed.

Code under simulation reads ``loop.now`` through the `clock` parameter it already takes (Membership, RouteState);
nothing here sleeps or reads the wall clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class EventLoop:
    """Virtual time; ``at(t, fn)`` schedules, ``run_until(t)`` executes in order (ties in scheduling order)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.events = 0

    def clock(self) -> float:
        return self.now

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._order), fn))

    def run_until(self, t_end: float) -> None:
        while self._heap and self._heap[0][0] <= t_end:
            t, _, fn = heapq.heappop(self._heap)
            self.now = t
            self.events += 1
            fn()
        self.now = max(self.now, t_end)

    def run(self) -> None:
        self.run_until(float("inf"))
