"""The in-process uplink shaper paces sends to the configured rate (used by --bandwidth-mbps), checked with a
fake clock: each send waits until the bytes queued before it would have left at that rate."""

from __future__ import annotations

import threading

import pytest

from comms.averaging import UplinkShaper, model_hash_of


class FakeTime:
    """A clock that only `sleep` moves; it records each sleep."""

    def __init__(self) -> None:
        self.now = 50.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)


def test_each_send_waits_for_the_bytes_queued_before_it() -> None:
    fake = FakeTime()
    shaper = UplinkShaper(mbps=8.0, clock=fake.clock, sleep=fake.sleep)  # 1 MB/s
    for _ in range(4):
        shaper.wait(50_000)
    assert fake.sleeps == pytest.approx([0.05, 0.10, 0.15, 0.20])  # 200 kB at 1 MB/s: the last leaves at 0.2 s


def test_paces_across_threads_and_idle_time_is_not_banked() -> None:
    fake = FakeTime()
    shaper = UplinkShaper(mbps=8.0, clock=fake.clock, sleep=fake.sleep)
    threads = [threading.Thread(target=shaper.wait, args=(50_000,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(fake.sleeps) == pytest.approx([0.05, 0.10, 0.15, 0.20])
    fake.now += 10.0  # a quiet spell earns no burst: the next send waits its own share again
    fake.sleeps.clear()
    shaper.wait(100_000)
    assert fake.sleeps == pytest.approx([0.1])


def test_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="bandwidth_mbps"):
        UplinkShaper(0)


def test_model_hash_depends_on_shapes_and_identity() -> None:
    a = model_hash_of([(3, 4), (5,)], "m")
    assert a == model_hash_of([(3, 4), (5,)], "m")
    assert a != model_hash_of([(4, 3), (5,)], "m") and a != model_hash_of([(3, 4), (5,)], "n")
