"""The demo's training precision follows what this CPU multiplies faster: bf16 only where it is clearly faster
(native bf16), fp32 where bf16 is emulated; and the nodes are told it."""

from __future__ import annotations

import pytest
import torch

from swarm.bench import demo
from training import inner


@pytest.mark.parametrize(("speedup", "expected"), [(0.01, "fp32"), (1.1, "fp32"), (1.3, "bf16"), (2.5, "bf16")])
def test_bf16_only_where_the_cpu_multiplies_it_faster(monkeypatch, speedup: float, expected: str) -> None:
    monkeypatch.setattr(inner, "cpu_bf16_speedup", lambda: speedup)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inner.fastest_cpu_precision() == expected
    assert demo.demo_precision() == expected
    assert demo.QUICK.train_settings(3, demo.demo_precision())["training.precision"] == expected


def test_the_measure_is_a_positive_ratio() -> None:
    inner.cpu_bf16_speedup.cache_clear()
    ratio = inner.cpu_bf16_speedup(64)
    assert ratio > 0 and ratio == inner.cpu_bf16_speedup(64)  # measured once per process and size
