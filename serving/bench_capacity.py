"""Capacity at SLO: the highest Poisson rate at which >= 90% of the requests sent meet their targets.

A search brackets the capacity (doubling from a start rate that passes; from one that fails, a first step down by
sqrt(2), then halving) and then bisects geometrically until the bracket is within a tolerance (10% by default),
within a bound on probes. Probes below the start rate are the long ones (a probe holds at least a fixed count of
requests, so its length grows as its rate falls): the first step down is the short one, which is all it takes
when the capacity lies near the start. The machine is shared, so one failing
probe may be a burst of other work: the failure that closes the bracket is probed again, and a pass above a
failure reopens the bracket upwards. One system's capacity is searched under
two definitions of meeting the TPOT target at once (stalls counted, Sarathi-Serve's TBT; the mean alone, vLLM's
goodput): every probe reports attainment under both, so the two searches share each probe at a rate both ask for.
This module knows rates and attainments; how a probe is run is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Callable

TARGET_ATTAINMENT = 0.9
BRACKET_STEP = 2.0  # per probe while bracketing; then geometric bisection
FIRST_STEP_DOWN = math.sqrt(2.0)  # from a failing start rate: the first probe below it
TOLERANCE = 0.1  # the search ends once the bracket's top is within this share above its bottom
MAX_HALVINGS = 5  # steps down (the first by sqrt(2)): nothing passing below means the system cannot serve this mix
DEFINITIONS = {"with_stalls": "slo_attainment_with_stalls", "mean_tpot": "slo_attainment_mean_tpot"}


def misses_to_fail(requests: int) -> int:
    """Fewest misses among `requests` that put attainment below `TARGET_ATTAINMENT` whatever the rest do."""
    return requests - math.ceil(TARGET_ATTAINMENT * requests - 1e-9) + 1


class CapacitySearch:
    """Bracket, then bisect (geometric midpoint) until `hi / lo <= 1 + tolerance` and `hi` failed twice. Driven
    one probe at a time, so the searches of several systems can interleave."""

    def __init__(self, start_rate: float, tolerance: float = TOLERANCE, min_rate: float = 0.0) -> None:
        self.start_rate = start_rate
        self.tolerance = tolerance
        self.min_rate = min_rate  # lowest rate worth a probe (a bounded search): failing there, capacity < it
        self.lo, self.hi, self.rate = 0.0, math.inf, start_rate
        self.points: list[tuple[float, float]] = []
        self.failures: dict[float, int] = {}

    def record(self, attained: float, rate: float | None = None) -> None:
        """Fold in a probe at `rate` (default: the rate this search asked for). A pass at or above the lowest
        failure shows that failure was noise: the bracket reopens upwards. A failure below the highest pass is
        kept as a point but moves nothing, for the same reason."""
        rate = self.rate if rate is None else rate
        self.points.append((rate, attained))
        if attained >= TARGET_ATTAINMENT:
            self.lo = max(self.lo, rate)
            if self.hi <= self.lo:
                self.hi = math.inf
        elif rate > self.lo:
            self.hi = min(self.hi, rate)
            self.failures[rate] = self.failures.get(rate, 0) + 1
        if self.hi == math.inf:
            self.rate = self.lo * BRACKET_STEP
        elif self.lo == 0.0:
            step = FIRST_STEP_DOWN if self.hi >= self.start_rate else BRACKET_STEP
            self.rate = max(self.hi / step, min(self.min_rate, self.hi))
        elif self._tight:
            self.rate = self.hi  # confirm the failure that closes the bracket
        else:
            self.rate = math.sqrt(self.lo * self.hi)

    @property
    def _tight(self) -> bool:
        return self.hi <= self.lo * (1 + self.tolerance)

    @property
    def done(self) -> bool:
        """The bracket is tight and its top failed twice, or nothing passed even far below the start rate."""
        if self.lo == 0.0:
            floor = max(self.start_rate / (FIRST_STEP_DOWN * BRACKET_STEP ** (MAX_HALVINGS - 1)), self.min_rate)
            return self.hi <= floor * (1 + self.tolerance)
        return self._tight and self.failures.get(self.hi, 0) >= 2

    @property
    def capacity(self) -> float:
        """Highest passing rate so far (0 if none passed)."""
        return self.lo

    @property
    def bracket(self) -> tuple[float, float | None]:
        return self.lo, (None if math.isinf(self.hi) else self.hi)


def capacity_search(
    probe: Callable[[float], float], start_rate: float, probes: int, tolerance: float = TOLERANCE
) -> tuple[float, list[tuple[float, float]]]:
    """Run one `CapacitySearch` until it is done or `probes` probes ran. `probe(rate) -> attainment`; returns the
    capacity and the probes."""
    search = CapacitySearch(start_rate, tolerance)
    for _ in range(probes):
        if search.done:
            break
        search.record(probe(search.rate))
    return search.capacity, search.points


class SystemSearch:
    """The searches of one system under both definitions, sharing probes: every probe's summary is folded into
    both, whichever asked for it. `next_rate()` names the next rate to probe (None: both done, or out of probes);
    `record(rate, summary)` feeds a probe's summary to both. At most `max_probes` in all, and at most
    `max_per_definition` asked for by one search (default: no bound of its own), so a noisy search under one
    definition cannot spend every probe before the other one's bracket closes."""

    def __init__(
        self,
        start_rate: float,
        max_probes: int,
        tolerance: float = TOLERANCE,
        min_rate: float = 0.0,
        max_per_definition: int | None = None,
    ) -> None:
        self.searches = {name: CapacitySearch(start_rate, tolerance, min_rate) for name in DEFINITIONS}
        self.results: list[tuple[float, dict]] = []
        self.max_probes = max_probes
        self.max_per_definition = max_probes if max_per_definition is None else max_per_definition
        self.asked = dict.fromkeys(DEFINITIONS, 0)  # probes each search asked for
        self._asker: str | None = None

    def next_rate(self) -> float | None:
        self._asker = None
        if len(self.results) >= self.max_probes:
            return None
        for name, search in self.searches.items():
            if not search.done and self.asked[name] < self.max_per_definition:
                self._asker = name
                return search.rate
        return None

    def record(self, rate: float, summary: dict) -> None:
        if self._asker is not None:
            self.asked[self._asker] += 1
            self._asker = None
        self.results.append((rate, summary))
        for name, search in self.searches.items():
            search.record(summary[DEFINITIONS[name]], rate)

    def capacities(self) -> dict[str, float]:
        return {name: search.capacity for name, search in self.searches.items()}

    def brackets(self) -> dict[str, tuple[float, float | None]]:
        return {name: search.bracket for name, search in self.searches.items()}
