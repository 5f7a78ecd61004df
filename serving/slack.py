"""How much of this engine's time online serving leaves free, for whoever co-schedules other work beside it.

`measure_slack` reads the scheduler after it planned a step: whether any online request is in the engine at all,
and how much of the step's budget (the tightest TPOT target x `tpot_budget_share`) the planned step leaves.
Offline requests (rollouts) are reported apart: how many wait, and whether one risks its deadline (laxity below
`LATE_MARGIN` x its predicted remaining time). The result is an immutable record, so readers in other threads
take it without a lock. This module knows nothing about training or what the slack is used for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serving.plan import SchedulerOutput
from serving.policies import decoding
from serving.request import Request

LATE_MARGIN = 2.0  # an offline request is late when its deadline is nearer than this x its predicted rest


@dataclass(frozen=True)
class Slack:
    """`online_idle`: no online request is admitted; `left_s`: seconds of the step budget the planned step leaves
    (inf when idle, 0 without a TPOT target); `offline_pending`: offline requests in the engine; `offline_late`: one
    of them needs the engine now to make its deadline; `at_s`: when this was measured (perf_counter)."""

    online_idle: bool = True
    left_s: float = math.inf
    offline_pending: int = 0
    offline_late: bool = False
    at_s: float = 0.0


def remaining_s(scheduler: object, req: Request) -> float:
    """Predicted time `req` still needs if it got every step: its pending prefill, then its decodes beside
    the current batch."""
    lat = scheduler.latency
    left = max(req.max_new_tokens - len(req.output_ids), 0)
    prefill = lat.step_s([(req.num_pending_tokens, req.num_tokens)]) if req.num_pending_tokens > 1 else 0.0
    return prefill + left * lat.decode_step_s(max(len(scheduler.running), 1), req.num_tokens)


def measure_slack(scheduler: object, output: SchedulerOutput | None, now: float) -> Slack:
    """The slack after `scheduler` planned `output` (None: nothing planned yet)."""
    everyone = [*scheduler.running, *scheduler.waiting]
    online = [r for r in everyone if not r.offline]
    offline = [r for r in everyone if r.offline]
    late = any(now + LATE_MARGIN * remaining_s(scheduler, r) >= r.deadline_s for r in offline)
    if not online:
        return Slack(True, math.inf, len(offline), late, now)
    step_limit = getattr(scheduler.budget_policy, "step_limit_s", None)
    limit = step_limit(decoding(online)) if step_limit is not None else None
    planned = output.predicted_step_s if output is not None else 0.0
    left = 0.0 if limit is None else max(limit - planned, 0.0)
    return Slack(False, left, len(offline), late, now)
