"""Step-weighted averaging through two real averaging processes on 127.0.0.1: a peer that did a third of a round's
steps sends weight 1/3, and both peers get the weighted mean (bitwise the same) with the paces both claimed."""

from __future__ import annotations

import pytest
import torch

from comms.averaging import AveragingResult, AveragingSettings
from tests.integration.averager_pair import started_pair, step_both

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(120)]
SHAPES = [(48,)]


def settings(initial: tuple[str, ...] = ()) -> AveragingSettings:
    return AveragingSettings(prefix="weights", codec="fp32", matchmaking_time_s=1.0, initial_peers=initial,
                             startup_timeout_s=30.0, request_timeout_s=2.0)  # fmt: skip


def test_a_straggler_s_part_counts_by_the_share_of_steps_it_did() -> None:
    # the straggler did a third of the steps: an update about a third as long (norms per unit of weight within the
    # reducers' 4x bound)
    data = [torch.linspace(1.0, 2.0, 48), torch.linspace(-0.2, 0.8, 48)]
    weights, paces = [1.0, 1 / 3], [0.25, 0.75]
    with started_pair(settings, SHAPES) as pair:
        per_peer = [{"weight": w, "pace_s": p} for w, p in zip(weights, paces, strict=True)]
        out = step_both(pair, data, round_index=3, per_peer=per_peer)
        ids = [av.peer_id for av in pair]
    want = (data[0] * weights[0] + data[1] * weights[1]) / sum(weights)
    for res in out:
        assert isinstance(res, AveragingResult), res
        assert res.group_size == 2
        assert torch.allclose(res.tensors[0], want, atol=1e-6)
        assert res.paces == {ids[0]: pytest.approx(0.25), ids[1]: pytest.approx(0.75)}
    assert torch.equal(out[0].tensors[0], out[1].tensors[0])
