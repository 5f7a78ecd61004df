"""How a reducer combines one part of the group's tensors when any sender may lie.

Every sender's averaging weight and part come from the network. A weight that is not a finite number above 0 is
refused and one above `max_weight` is cut to it, so no sender outweighs an honest one (a weight of 1e30 would
otherwise make its part the average, and a NaN or negative one would poison or abort the round). A part of the
wrong shape, with NaN/Inf, or whose norm is above `max_norm_ratio` times the median norm of the parts received is
excluded (see `combine_parts` for why excluded and not clipped). The rest are averaged with their weights. This
module knows nothing about hivemind or networks: it combines tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PartPolicy:
    """`max_weight`: the largest averaging weight a sender may carry (honest trainers send 1: every member's
    pseudo-gradient counts the same, DiLoCo's plain mean). `max_norm_ratio`: a part whose L2 norm is above this
    many times the median of the parts' norms is excluded."""

    max_weight: float = 1.0
    max_norm_ratio: float = 4.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_weight) and self.max_weight > 0):
            raise ValueError(f"max_weight={self.max_weight} must be a finite number > 0")
        if not (math.isfinite(self.max_norm_ratio) and self.max_norm_ratio >= 1):
            raise ValueError(f"max_norm_ratio={self.max_norm_ratio} must be a finite number >= 1")


@dataclass
class CombinedPart:
    """The weighted mean of the parts kept (None when none was), who was kept, and why the others were not."""

    average: torch.Tensor | None
    kept: list[int]
    excluded: dict[int, str] = field(default_factory=dict)


def bounded_weight(weight: object, max_weight: float) -> float:
    """The weight a sender's part is averaged with: 0.0 (refused) for anything but a finite number > 0, at most
    `max_weight`."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return 0.0
    weight = float(weight)
    if not math.isfinite(weight) or weight <= 0:
        return 0.0
    return min(weight, max_weight)


def lower_median(values: list[float]) -> float:
    """The lower median: with a majority of honest values it is never above the largest honest one, and for two
    values it is the smaller, so a single huge claim never raises it."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def combine_parts(parts: dict[int, tuple[torch.Tensor, object]], shape: torch.Size, policy: PartPolicy) -> CombinedPart:
    """Weighted mean of the acceptable `parts` (sender index -> (part, claimed weight)), summed in sender order.

    A part far above the median norm is excluded rather than clipped (as BTARD's centered clipping would): the
    groups here have 2-8 members, where a clipped part still moves the mean by up to `max_norm_ratio` times an
    honest update divided by the group size, in a direction the attacker chooses, every round; while honest
    members train the same model from the same state with the same learning rate, so their pseudo-gradients'
    norms differ by tens of percent, not by a factor of `max_norm_ratio`. Excluding it leaves the honest mean as
    it was. What a part under the limit can still do is bounded: with n honest parts of norm at most G and a
    median from an honest majority, one sender moves the average by at most
    `max_weight * (max_norm_ratio + 1) * G / (n + max_weight)` (README, training).

    Norms are compared per unit of weight (a part's norm divided by its weight): honest peers that ended a round
    early (`training.pace`) send weight = the share of the round's steps they did and an update about that much
    smaller. With weights at most `max_weight` = 1 the bound above holds with G bounding the honest parts' norms
    per unit of weight, and a sender claiming a small weight gets no larger part through: its norm limit shrinks
    with the weight its part is averaged with."""
    excluded: dict[int, str] = {}
    candidates: dict[int, tuple[torch.Tensor, float]] = {}
    for sender in sorted(parts):
        tensor, claimed = parts[sender]
        weight = bounded_weight(claimed, policy.max_weight)
        if weight == 0.0:
            excluded[sender] = "weight"
        elif tuple(tensor.shape) != tuple(shape):
            excluded[sender] = "shape"
        elif not bool(torch.isfinite(tensor).all()):
            excluded[sender] = "non-finite"
        else:
            candidates[sender] = (tensor.to(torch.float32), weight)
    # A part's norm per unit of its weight: a peer that did a fifth of the round's steps (weight 0.2) sends about a
    # fifth of a full round's update, and compared as it is, the full rounds' parts would be the outliers.
    norms = {sender: float(torch.linalg.vector_norm(t)) / w for sender, (t, w) in candidates.items()}
    if norms:
        limit = policy.max_norm_ratio * lower_median(list(norms.values()))
        for sender, norm in norms.items():
            if norm > limit:
                excluded[sender] = "norm"
                del candidates[sender]
    if not candidates:
        return CombinedPart(None, [], excluded)
    total = torch.zeros(shape, dtype=torch.float32)
    weights = 0.0
    for tensor, weight in candidates.values():
        total.add_(tensor, alpha=weight)
        weights += weight
    return CombinedPart(total.div_(weights), sorted(candidates), excluded)


def plausible_average(
    average: torch.Tensor, own_part: torch.Tensor, policy: PartPolicy, own_weight: float = 1.0
) -> bool:
    """Whether an average a reducer returned for a part can be one `combine_parts` made, seen from a sender that
    knows only its own part and weight: same shape, finite, and a norm at most `max_norm_ratio`**2 times its own
    part's norm per unit of weight. The combined parts' norms per unit of weight are at most `max_norm_ratio`
    times their median, and honest parts' are within `max_norm_ratio` of each other (or the rule would exclude
    honest parts), hence the square; a weighted mean of parts with weights at most 1 is no longer than the
    longest part per unit of weight. A sender refuses anything else and keeps its own values for that part, as
    for a reducer that failed."""
    if tuple(average.shape) != tuple(own_part.shape) or not bool(torch.isfinite(average).all()):
        return False
    weight = bounded_weight(own_weight, policy.max_weight) or policy.max_weight
    limit = policy.max_norm_ratio**2 * float(torch.linalg.vector_norm(own_part.float())) / weight
    return float(torch.linalg.vector_norm(average.float())) <= limit
