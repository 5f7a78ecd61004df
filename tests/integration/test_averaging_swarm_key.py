"""The swarm key covers the averaging stack: two keyed peers average and share state; a process with another key
cannot start against them, and a keyless plain-hivemind process is refused by the DHT and by every averaging RPC
(it reads no state, joins no group, feeds no part). The refusals are counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from comms.averaging import AveragingError, AveragingResult, AveragingSettings, HivemindAverager
from tests.integration.averager_pair import started_pair, step_both

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]
SHAPES = [(64,)]
KEY = "ab" * 32
OTHER_KEY = "cd" * 32


def settings(key: str | None, initial: tuple[str, ...] = ()) -> AveragingSettings:
    return AveragingSettings(
        prefix="keyed", codec="fp32", matchmaking_time_s=1.0, initial_peers=initial, swarm_key_hex=key,
        startup_timeout_s=15.0, request_timeout_s=2.0,
    )  # fmt: skip


@pytest.fixture
def keyed_pair() -> Iterator[list[HivemindAverager]]:
    with started_pair(lambda initial: settings(KEY, initial), SHAPES) as made:
        yield made


@pytest.mark.flaky(reruns=2)  # hivemind start-up and matchmaking timing on a busy machine; every assertion holds
def test_outsiders_without_the_key_are_refused(keyed_pair: list[HivemindAverager]) -> None:
    a, b = keyed_pair
    assert all(m.startswith("/ip4/127.0.0.1/tcp/") for m in a.visible_maddrs + b.visible_maddrs)  # where they listen
    state = [torch.arange(64, dtype=torch.float32)]
    a.share_state({"round": 1, "step": 5, "model_hash": "h"}, state)
    meta, tensors = b.load_state(timeout_s=10.0, peer=a.peer_id)  # a keyed peer reads it
    assert meta["step"] == 5 and torch.equal(tensors[0], state[0])

    other = HivemindAverager(settings(OTHER_KEY, tuple(a.visible_maddrs)), SHAPES, "h")
    with pytest.raises(AveragingError, match="bootstrap failed"):
        other.start()  # its DHT pings are refused by both keyed peers
    other.close()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HIVEMIND_LOGLEVEL": "ERROR"}
    prefix = f"{a.settings.prefix}_{a.model_hash}"  # as HivemindAverager names the run
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.keyless_outsider", prefix, a.peer_id, *a.visible_maddrs],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "dht": "refused: RuntimeError",
        "download_state": "refused: P2PHandlerError",
        "join_group": "refused: P2PHandlerError",
        "aggregate_part": "refused: P2PHandlerError",
    }, seen

    data = [torch.full((64,), 1.0), torch.full((64,), 3.0)]
    results = step_both(keyed_pair, data)
    for res in results:
        assert isinstance(res, AveragingResult), res
        assert res.group_size == 2 and sorted(res.peers) == sorted([a.peer_id, b.peer_id])
        assert torch.allclose(res.tensors[0], torch.full((64,), 2.0))
    assert a.counters.swarm_key_refused >= 3  # the outsider's three averaging RPCs (its DHT pings add more)
