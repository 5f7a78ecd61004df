"""The in-process uplink shaper paces sends to the configured rate (used by --bandwidth-mbps)."""

from __future__ import annotations

import threading
import time

import pytest

from comms.averaging import UplinkShaper, model_hash_of


def test_paces_to_the_rate_across_threads() -> None:
    shaper = UplinkShaper(mbps=8.0)  # 1 MB/s
    started = time.monotonic()
    threads = [threading.Thread(target=shaper.wait, args=(50_000,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 1.0  # 200 kB at 1 MB/s


def test_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="bandwidth_mbps"):
        UplinkShaper(0)


def test_model_hash_depends_on_shapes_and_identity() -> None:
    a = model_hash_of([(3, 4), (5,)], "m")
    assert a == model_hash_of([(3, 4), (5,)], "m")
    assert a != model_hash_of([(4, 3), (5,)], "m") and a != model_hash_of([(3, 4), (5,)], "n")
