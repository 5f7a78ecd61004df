"""What a reducer does with senders' claims: weights bounded, bad parts excluded, the rest averaged exactly; and the
hivemind reducer subclass built on it, driven as hivemind drives it (one coroutine per sender)."""

from __future__ import annotations

import math

import pytest
import torch

from comms.robust_average import PartPolicy, bounded_weight, combine_parts, lower_median, plausible_average
from tests.unit.comms.fresh_interpreter import assert_script_prints_ok

pytestmark = pytest.mark.timeout(60)
POLICY = PartPolicy(max_weight=1.0, max_norm_ratio=4.0)
SHAPE = torch.Size([2])


def test_weights_are_finite_positive_and_capped() -> None:
    assert bounded_weight(1.0, 1.0) == 1.0
    assert bounded_weight(0.25, 1.0) == 0.25
    assert bounded_weight(1e30, 1.0) == 1.0
    assert bounded_weight(math.inf, 1.0) == 0.0
    assert bounded_weight(math.nan, 1.0) == 0.0
    assert bounded_weight(-1.0, 1.0) == 0.0
    assert bounded_weight(0.0, 1.0) == 0.0
    assert bounded_weight(True, 1.0) == 0.0
    assert bounded_weight("1", 1.0) == 0.0


def test_lower_median() -> None:
    assert lower_median([3.0]) == 3.0
    assert lower_median([5.0, 1.0]) == 1.0  # of two, the smaller: one huge claim never raises it
    assert lower_median([1.0, 9.0, 2.0]) == 2.0
    assert lower_median([4.0, 1.0, 1e9, 2.0]) == 2.0


def test_honest_parts_average_exactly() -> None:
    parts = {0: (torch.tensor([1.0, 2.0]), 1.0), 1: (torch.tensor([3.0, 4.0]), 1.0), 2: (torch.tensor([2.0, 0.0]), 1.0)}
    out = combine_parts(parts, SHAPE, POLICY)
    assert out.kept == [0, 1, 2] and out.excluded == {}
    assert torch.equal(out.average, torch.tensor([2.0, 2.0]))


def test_weight_1e30_counts_as_one_and_bad_weights_are_excluded() -> None:
    honest = {0: (torch.tensor([1.0, 0.0]), 1.0), 1: (torch.tensor([0.0, 1.0]), 1.0)}
    heavy = combine_parts({**honest, 2: (torch.tensor([1.0, 1.0]), 1e30)}, SHAPE, POLICY)
    assert heavy.kept == [0, 1, 2]
    assert torch.allclose(heavy.average, torch.tensor([2 / 3, 2 / 3]))  # (1+0+1)/3, not the heavy part
    for bad in (math.nan, -1.0, 0.0, math.inf):
        out = combine_parts({**honest, 2: (torch.tensor([1.0, 1.0]), bad)}, SHAPE, POLICY)
        assert out.excluded == {2: "weight"} and out.kept == [0, 1]
        assert torch.equal(out.average, torch.tensor([0.5, 0.5]))


def three_honest() -> dict[int, tuple[torch.Tensor, object]]:
    """Three parts of norm 5 each (median norm 5)."""
    return {i: (torch.tensor(v), 1.0) for i, v in enumerate([[3.0, 4.0], [0.0, 5.0], [4.0, 3.0]])}


def test_non_finite_wrong_shape_and_huge_norm_parts_are_excluded() -> None:
    honest = three_honest()
    for part, reason in [
        (torch.tensor([math.nan, 1.0]), "non-finite"),
        (torch.tensor([math.inf, 1.0]), "non-finite"),
        (torch.tensor([1.0]), "shape"),  # would broadcast into hivemind's running sum
        (torch.tensor([1.0, 2.0, 3.0]), "shape"),
        (torch.tensor([0.0, 20.01]), "norm"),  # median norm 5, limit 4 * 5 = 20
    ]:
        out = combine_parts({**honest, 3: (part, 1.0)}, SHAPE, POLICY)
        assert out.excluded == {3: reason}, reason
        assert torch.allclose(out.average, torch.tensor([7 / 3, 4.0]))
    at_limit = combine_parts({**honest, 3: (torch.tensor([0.0, 20.0]), 1.0)}, SHAPE, POLICY)
    assert at_limit.kept == [0, 1, 2, 3]  # exactly at the limit: kept, and the bound below holds
    assert torch.allclose(at_limit.average, torch.tensor([7 / 4, 32 / 4]))


def test_one_senders_shift_stays_within_the_documented_bound() -> None:
    """max_weight * (ratio + 1) * G / (n + max_weight): n = 3 honest parts of norm <= G = 5."""
    honest = three_honest()
    base = combine_parts(honest, SHAPE, POLICY).average
    bound = 1.0 * (4.0 + 1) * 5.0 / (3 + 1.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        direction = torch.randn(2, generator=gen)
        attack = direction / direction.norm() * 20.0  # as long as the rule lets through
        out = combine_parts({**honest, 3: (attack, 1e30)}, SHAPE, POLICY)
        assert float((out.average - base).norm()) <= bound + 1e-5


def test_a_peer_that_ended_its_round_early_leaves_the_full_rounds_parts_in() -> None:
    """A pair where one peer did 1 of 5 steps (weight 0.2, an update about a fifth, or far less under the learning
    rate's warm-up) and the other all 5: norms compared per unit of weight, neither part is excluded; compared as
    they are, the full round's part (15 times longer here) was the outlier and only the fifth was averaged."""
    partial, full = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 15.0])
    out = combine_parts({0: (partial, 0.2), 1: (full, 1.0)}, SHAPE, POLICY)
    assert out.kept == [0, 1] and out.excluded == {}
    assert torch.allclose(out.average, (0.2 * partial + full) / 1.2)
    # the average each gets back is plausible to both, the partial peer judging with its own weight
    assert plausible_average(out.average, partial, POLICY, own_weight=0.2)
    assert plausible_average(out.average, full, POLICY)
    # judged as if it had done the whole round, an average of a full round 20 times its part would be refused
    lopsided = combine_parts({0: (partial, 0.2), 1: (torch.tensor([0.0, 19.9]), 1.0)}, SHAPE, POLICY)
    assert lopsided.kept == [0, 1]
    assert not plausible_average(lopsided.average, partial, POLICY)
    assert plausible_average(lopsided.average, partial, POLICY, own_weight=0.2)


def test_a_small_claimed_weight_buys_no_longer_part() -> None:
    """A sender claiming weight 0.01 is held to 4 * median * 0.01: the limit shrinks with the weight it is
    averaged with, so what it moves stays within the documented bound."""
    honest = three_honest()  # median norm 5
    small = combine_parts({**honest, 3: (torch.tensor([0.0, 0.19]), 0.01)}, SHAPE, POLICY)
    assert small.kept == [0, 1, 2, 3]
    long = combine_parts({**honest, 3: (torch.tensor([0.0, 0.21]), 0.01)}, SHAPE, POLICY)
    assert long.excluded == {3: "norm"}


def test_no_acceptable_part_gives_no_average() -> None:
    out = combine_parts({0: (torch.tensor([math.nan, 0.0]), 1.0), 1: (torch.ones(2), -2.0)}, SHAPE, POLICY)
    assert out.average is None and out.kept == [] and out.excluded == {0: "non-finite", 1: "weight"}


def test_a_returned_average_is_plausible_only_within_ratio_squared_of_the_own_part() -> None:
    own = torch.tensor([3.0, 4.0])  # norm 5: the limit is 4**2 * 5 = 80
    assert plausible_average(torch.tensor([0.0, 80.0]), own, POLICY)
    assert plausible_average(torch.zeros(2), own, POLICY)
    assert not plausible_average(torch.tensor([0.0, 80.1]), own, POLICY)
    assert not plausible_average(torch.tensor([math.nan, 0.0]), own, POLICY)
    assert not plausible_average(torch.zeros(3), own, POLICY)
    assert plausible_average(torch.zeros(2), torch.zeros(2), POLICY)


def test_policy_bounds_are_checked() -> None:
    for kwargs in ({"max_weight": 0.0}, {"max_weight": math.nan}, {"max_norm_ratio": 0.5}):
        with pytest.raises(ValueError):
            PartPolicy(**kwargs)


REDUCER_SCRIPT = r"""
import asyncio, math
import torch
from comms.hivemind_reducer import RobustPartReducer
from comms.robust_average import PartPolicy
excluded = []
shapes = (torch.Size([2]), torch.Size([3]))
sent = {
    0: ([torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0, 3.0])], 1.0),
    1: ([torch.tensor([3.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])], 1.0),
    2: ([torch.tensor([1e6, 0.0]), torch.tensor([math.nan, 0.0, 0.0])], 1e30),
}
async def main():
    reducer = RobustPartReducer(shapes, 3, policy=PartPolicy(1.0, 4.0), on_excluded=excluded.append)
    async def sender(i):
        parts, weight = sent[i]
        return [await reducer.accumulate_part(i, k, p, weight=weight) for k, p in enumerate(parts)]
    return await asyncio.wait_for(asyncio.gather(*(sender(i) for i in sent)), 10)
for got in asyncio.run(main()):  # every sender gets the same combined parts
    assert torch.equal(got[0], torch.tensor([2.0, 2.0])), got
    assert torch.equal(got[1], torch.tensor([2.0, 2.0, 2.0])), got
assert sorted(excluded) == ["non-finite", "norm"], excluded
from hivemind.averaging.partition import TensorPartContainer
from comms.hivemind_reducer import check_returned_averages, equal_shares
refused = []
local = torch.tensor([3.0, 4.0, 1.0, 1.0])
container = TensorPartContainer([local], (0.5, 0.5), part_size_bytes=8, return_deltas=False)
check_returned_averages(container, 0, PartPolicy(1.0, 4.0), lambda: refused.append(1))
container.register_processed_part(0, 0, torch.tensor([9.0, 9.0]))  # own reduction: not checked
container.register_processed_part(1, 0, torch.tensor([1e6, 0.0]))  # a forged reducer's average: refused
assert refused == [1], refused
assert torch.equal(container._output_parts_by_peer[1][0], torch.tensor([1.0, 1.0]))  # own values kept
assert equal_shares(10, [None, None]) == (5, 5)
assert equal_shares(10, [None, 1e30, None]) == (4, 3, 3)  # a claimed bandwidth buys no larger share
assert equal_shares(10, [None, 0.0, float("nan"), -1.0]) == (10, 0, 0, 0)  # client mode or nonsense: none
print("ok")
"""


def test_hivemind_reducer_combines_every_part_and_counts_exclusions() -> None:
    """Driven as hivemind drives it, one coroutine per sender; and shares of the vector to reduce that no claimed
    bandwidth changes (in a fresh interpreter: hivemind and libp2p cannot share one)."""
    assert_script_prints_ok(REDUCER_SCRIPT)
