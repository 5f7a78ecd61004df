"""An averaging process killed with SIGKILL (as one killed on a timeout is) is started again by the train role's
`AveragerRestarts`, rejoins through the swarm's addresses and averages with its group again, keyed."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import torch

from comms.averaging import AveragingError, AveragingResult, AveragingSettings, HivemindAverager
from swarm.runtime.train_role import AveragerRestarts
from tests.integration.averager_pair import started_pair, step_both

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(180)]
SHAPES = [(32,)]
KEY = "5a" * 32


def settings(initial: tuple[str, ...] = ()) -> AveragingSettings:
    return AveragingSettings(
        prefix="restart", codec="fp32", matchmaking_time_s=1.0, initial_peers=initial, swarm_key_hex=KEY,
        startup_timeout_s=15.0, request_timeout_s=2.0,
    )  # fmt: skip


@pytest.fixture
def pair() -> Iterator[list[HivemindAverager]]:
    with started_pair(settings, SHAPES) as made:
        yield made


def test_killed_averager_restarts_and_averages_again(pair: list[HivemindAverager]) -> None:
    a, b = pair
    restarts = AveragerRestarts(b, lambda: list(a.visible_maddrs), max_failures=2, backoff_s=0.5)
    assert restarts.check() is False  # alive: nothing to do
    old_id = b.peer_id
    os.killpg(b._proc.pid, signal.SIGKILL)  # the whole process group: worker, DHT and p2pd
    deadline = time.monotonic() + 10
    while b.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not b.alive
    with pytest.raises(AveragingError, match="exited"):  # left alone, every round would fail
        b.step([torch.zeros(32)], round_index=0, timeout_s=2.0)

    assert restarts.check() is True
    assert b.alive and b.counters.restarts == 1 and b.peer_id != old_id and restarts.failures == 0
    data = [torch.full((32,), -1.0), torch.full((32,), 3.0)]  # norms within the reducers' 4x-median bound
    for res in step_both(pair, data):
        assert isinstance(res, AveragingResult), res
        assert res.group_size == 2 and b.peer_id in res.peers
        assert torch.allclose(res.tensors[0], torch.full((32,), 1.0))
