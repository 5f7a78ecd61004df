"""When a slow peer ends its round: at the group's round deadline, with the steps it did.

A round starts when the peer's last exchange ends (the members of a group leave it together), and its deadline is
that start plus H inner steps at `DEADLINE_SLACK` times the group's pace: the lower median of the seconds per inner
step the members claimed in their last round together. A peer that reaches the deadline with fewer than H steps of
the round done ends the round there and averages what it has, weighted by the share of the round's steps it did; a
peer at the group's pace never reaches it, so the group waits for a straggler a fraction of a round at most and
never leaves it behind. Paces are claims: the lower median moves only with a majority of the group (for two members
it is the faster one's: a lie makes the liar's partner do fewer steps, never more), and the deadline is checked
after a step, so a round has at least one. Before this peer has been in a group there is no deadline. This module
knows nothing about networks or tensors: it counts steps against a clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from comms.robust_average import lower_median

# The deadline allows H steps at this many times the group's pace. Paces measured on a shared machine jitter by
# tens of percent from round to round (and a round with an evaluation in it is slower): at 1.0 peers at the
# group's own pace had rounds cut (10 of 24 NoLoCo rounds of a fast peer in `bench train --straggler 3`); at 1.5 a
# peer three times slower still averages half of its round's steps, and the group waits half a round at most.
DEADLINE_SLACK = 1.5


class RoundDeadline:
    """The round clock of one peer. `start_round()` when a round starts (after an exchange), `step_done()` after
    each inner step, `pace_s()` to claim with the exchange, `learn(paces)` with what the group claimed,
    `overdue(steps_in_round)` to ask whether to end the round now. The trainer starts the first round before its
    first step (set-up time is no pace)."""

    def __init__(self, inner_steps: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner_steps = inner_steps
        self.clock = clock
        self.group_pace_s: float | None = None
        self.steps_done = 0  # inner steps this peer did since the round started
        self.started: float | None = None

    def start_round(self) -> None:
        self.started = self.clock()
        self.steps_done = 0

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on other work than inner steps (an evaluation, a checkpoint) out of the round: a
        round with an evaluation in it is no slower to train."""
        if self.started is not None:
            self.started += max(0.0, seconds)

    def step_done(self) -> None:
        self.steps_done += 1

    def pace_s(self) -> float | None:
        """Seconds per inner step this peer took since its round started (None before its first step)."""
        if self.started is None or self.steps_done == 0:
            return None
        return max(1e-6, (self.clock() - self.started) / self.steps_done)

    def learn(self, paces: dict[str, float]) -> None:
        """Take the group's pace from the paces its members claimed (this peer's own among them); claims that are
        not finite numbers above 0 are left out, and without any the last pace stays."""
        valid = [p for p in paces.values() if isinstance(p, float) and math.isfinite(p) and p > 0]
        if valid:
            self.group_pace_s = lower_median(valid)

    def deadline(self) -> float | None:
        if self.started is None or self.group_pace_s is None:
            return None
        return self.started + self.inner_steps * self.group_pace_s * DEADLINE_SLACK

    def overdue(self, steps_in_round: int) -> bool:
        """Whether a peer `steps_in_round` steps into its round (0 < it < H) has passed the round's deadline."""
        deadline = self.deadline()
        return deadline is not None and 0 < steps_in_round < self.inner_steps and self.clock() >= deadline
