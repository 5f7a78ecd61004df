"""hivemind's part reducer, except that it keeps every sender's part and combines them with `comms.robust_average`.

hivemind's `TensorPartReducer` adds each part times the weight its sender claims to a running sum, so one sender
with weight 1e30 makes its part the average, and a part of the wrong shape is broadcast into the sum. This one
holds the parts of the current part index until every sender still in the round has sent it (hivemind's own
bookkeeping decides who that is), then averages the acceptable ones (`combine_parts`) and reports each excluded
part to `on_excluded`. An excluded part never aborts the round: the others' mean goes back to every sender.
`check_returned_averages` bounds what a reducer can return; `install` makes every member reduce an equal share,
whatever bandwidth it claims. It runs in the averaging
process (`comms.hivemind_worker`) and knows nothing about training.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import torch
from hivemind.averaging import averager as averager_module
from hivemind.averaging.load_balancing import hagenbach_bishoff
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartContainer, TensorPartReducer

from comms.robust_average import PartPolicy, combine_parts, plausible_average


class RobustPartReducer(TensorPartReducer):
    """Same contract as `TensorPartReducer` (parts in order, one future per part index), with `combine_parts`."""

    def __init__(
        self,
        part_shapes: Sequence[torch.Size],
        num_senders: int,
        *,
        policy: PartPolicy,
        on_excluded: Callable[[str], None],
    ) -> None:
        self.policy = policy
        self.on_excluded = on_excluded
        self._parts: dict[int, tuple[torch.Tensor, object]] = {}
        super().__init__(part_shapes, num_senders)

    def reset_accumulators(self) -> None:
        self._parts = {}
        super().reset_accumulators()

    async def accumulate_part(
        self, sender_index: int, part_index: int, tensor_part: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        """Hold this sender's part, wait until every sender's is in, then return the combined part."""
        if not (0 <= sender_index < self.num_senders and 0 <= part_index < self.num_parts):
            raise AllreduceException(f"sender {sender_index} or part {part_index} is out of range")
        self.num_parts_received[sender_index] += 1
        while part_index > self.current_part_index:
            await self._wait_for_current_part()
        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        if part_index != self.current_part_index or sender_index in self._parts:
            raise AllreduceException(f"sender {sender_index} sent part {part_index} out of order")
        future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self._parts[sender_index] = (tensor_part, weight)
            self.current_part_accumulated_from += 1
            self.check_current_part_finished()
        return await future

    async def _wait_for_current_part(self) -> None:
        await asyncio.wait(
            {self.current_part_future, asyncio.create_task(self.finished.wait())},
            return_when=asyncio.FIRST_COMPLETED,
        )
        if self.finished.is_set():
            raise AllreduceException(f"attempted to aggregate part in a finalized {type(self).__name__}")

    def check_current_part_finished(self) -> None:
        if self.current_part_accumulated_from < self.num_current_senders:
            return
        combined = combine_parts(self._parts, self.part_shapes[self.current_part_index], self.policy)
        for reason in combined.excluded.values():
            self.on_excluded(reason)
        if combined.average is None:
            self.current_part_future.set_exception(AllreduceException("no sender's part was acceptable"))
        else:
            self.current_part_future.set_result(combined.average)
        self.reset_accumulators()


def check_returned_averages(
    container: TensorPartContainer,
    own_index: int,
    policy: PartPolicy,
    on_refused: Callable[[], None],
    own_weight: float = 1.0,
) -> None:
    """Make `container` (a runner's) refuse an average a remote reducer returns that `plausible_average` rejects:
    the sender keeps its own values for that part, as hivemind does for a reducer that failed."""
    register = container.register_processed_part

    def checked(peer_index: int, part_index: int, part: torch.Tensor) -> None:
        if peer_index != own_index:
            own_part = container._input_parts_by_peer[peer_index][part_index][0]
            if not plausible_average(part, own_part, policy, own_weight):
                on_refused()
                part = own_part.detach().clone()
        register(peer_index, part_index, part)

    container.register_processed_part = checked


def equal_shares(vector_size: int, bandwidths: Sequence[float | None], min_size: int = 0) -> tuple[int, ...]:
    """How many values each group member reduces: equal shares for every member that reduces at all (hivemind's
    `load_balance_peers` gives shares by the bandwidth each member claims, so one claiming 1e30 would reduce the
    whole vector, and choose the average everyone gets). A member claiming 0 (client mode) or anything but a
    positive number reduces nothing; `min_size` is hivemind's and unused (the node passes 0)."""
    scores = [1.0 if b is None or (isinstance(b, (int, float)) and b > 0) else 0.0 for b in bandwidths]
    if not any(scores):
        raise AllreduceException("no member of the group reduces")
    return tuple(hagenbach_bishoff(vector_size, scores))


def install() -> None:
    """The averager computes shares with the name `load_balance_peers` of its module (in the averaging process and
    the averager's, forked from it)."""
    averager_module.load_balance_peers = equal_shares
