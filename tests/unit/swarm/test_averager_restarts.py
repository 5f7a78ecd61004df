"""`AveragerRestarts`: a dead averaging process is restarted at once with the swarm's current addresses (not its
own old ones); failed starts are retried after a doubling backoff (an injected clock) and give up past the bound."""

from __future__ import annotations

import pytest

from comms.averaging import AveragingCounters, AveragingError
from protocols.errors import ErrorCode
from swarm.runtime.train_role import AveragerRestarts


class FakeAverager:
    """Dies when told; its starts fail while `failing` is positive."""

    def __init__(self) -> None:
        self.alive = True
        self.failing = 0
        self.visible_maddrs = ["/ip4/127.0.0.1/tcp/1/p2p/old"]
        self.counters = AveragingCounters()
        self.peer_id = "old"
        self.started_with: list[list[str]] = []

    def restart(self, initial_peers: list[str]) -> None:
        self.started_with.append(list(initial_peers))
        if self.failing:
            self.failing -= 1
            raise AveragingError(ErrorCode.INTERNAL, "DHT bootstrap failed")
        self.alive, self.peer_id = True, f"new{len(self.started_with)}"
        self.counters.restarts += 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(av: FakeAverager, clock: Clock, max_failures: int = 3) -> AveragerRestarts:
    gossip = ["/ip4/127.0.0.1/tcp/1/p2p/old", "/ip4/127.0.0.1/tcp/2/p2p/other"]
    return AveragerRestarts(av, lambda: gossip, max_failures=max_failures, backoff_s=2.0, clock=clock)


def test_dead_process_restarts_at_once_with_the_swarm_addresses() -> None:
    av, clock = FakeAverager(), Clock()
    restarts = make(av, clock)
    assert restarts.check() is False and av.started_with == []
    av.alive = False
    assert restarts.check() is True
    assert av.started_with == [["/ip4/127.0.0.1/tcp/2/p2p/other"]]  # its own dead address is not a bootstrap
    assert av.alive and av.counters.restarts == 1


def test_failed_starts_back_off_doubling_then_give_up() -> None:
    av, clock = FakeAverager(), Clock()
    restarts = make(av, clock, max_failures=3)
    av.alive, av.failing = False, 10
    tries_at = []
    for _ in range(200):  # bounded: one check per simulated 0.5 s
        before = len(av.started_with)
        try:
            restarts.check()
        except AveragingError as err:
            assert "4 times in a row" in str(err)
            break
        if len(av.started_with) > before:
            tries_at.append(clock.now - 100.0)
        clock.now += 0.5
    else:
        pytest.fail("never gave up")
    assert tries_at == [0.0, 2.0, 6.0]  # at once, then after 2 s and 4 s; the 4th failure (after 8 s) raises
    assert len(av.started_with) == 4


def test_a_successful_start_resets_the_failures() -> None:
    av, clock = FakeAverager(), Clock()
    restarts = make(av, clock)
    av.alive, av.failing = False, 1
    assert restarts.check() is False and restarts.failures == 1
    clock.now += 2.0
    assert restarts.check() is True and restarts.failures == 0 and av.peer_id == "new2"


def test_a_closed_averager_is_never_restarted() -> None:
    from comms.averaging import AveragingSettings, HivemindAverager

    av = HivemindAverager(AveragingSettings(), [(4,)], "h")
    av.close()  # as the node does on shutdown, possibly while the training thread checks
    with pytest.raises(AveragingError, match="closed") as err:
        av.restart(["/ip4/127.0.0.1/tcp/1/p2p/x"])
    assert err.value.code == ErrorCode.CANCELLED and not av.alive and av.counters.restarts == 0
