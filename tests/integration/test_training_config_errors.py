"""`swarm join --roles train` with H or fragment counts that do not fit the run: a non-zero exit naming the field,
before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.timeout(180)]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        (["training.inner_steps=2000", "training.total_steps=100"], "inner_steps=2000 exceeds total_steps=100"),
        (
            ["training.outer_optimizer=streaming", "training.inner_steps=8", "training.num_fragments=16"],
            "num_fragments=16 exceeds inner_steps=8",
        ),
    ],
)
def test_run_that_h_or_fragments_do_not_fit_exits_naming_the_field(settings: list[str], named: str) -> None:
    sets = [arg for s in settings for arg in ("--set", s)]
    cmd = [sys.executable, "-m", "swarm", "join", "--roles", "train", "--listen", "/ip4/127.0.0.1/tcp/0", *sets]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert named in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
