"""`lead_delay_s` is checked before anything reaches the averaging process."""

from __future__ import annotations

import pytest
import torch

from comms.averaging import AveragingError, AveragingSettings, HivemindAverager


@pytest.mark.parametrize("delay", [-0.1, 1.5, float("nan"), float("inf"), 1])
def test_a_lead_delay_outside_the_matchmaking_period_is_refused(delay: float) -> None:
    averager = HivemindAverager(AveragingSettings(prefix="t", matchmaking_time_s=1.0), [(4,)], "hash")  # not started
    with pytest.raises(AveragingError, match="lead_delay_s") as err:
        averager.step([torch.zeros(4)], round_index=0, timeout_s=1.0, lead_delay_s=delay)
    assert err.value.code.name == "BAD_REQUEST"
    assert averager.counters.rounds_failed == 0  # refused, not a round that failed
