"""Decode attention groups: decodes of very different context lengths stop reading each other's padding."""

from __future__ import annotations

import itertools

from serving.runner import MAX_DECODE_GROUPS, split_by_width


def test_groups_are_contiguous_cover_everything_and_split_only_when_it_pays() -> None:
    assert split_by_width([5, 6, 7, 8]) == [(0, 4)]  # similar widths: one group
    assert split_by_width([2] * 10 + [20] * 3) == [(0, 10), (10, 13)]
    widths = [1, 2, 3, 5, 8, 9, 10, 12, 15, 20, 24, 25]
    runs = split_by_width(widths)
    assert len(runs) <= MAX_DECODE_GROUPS
    assert runs[0][0] == 0 and runs[-1][1] == len(widths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))
    padded = sum((hi - lo) * widths[hi - 1] for lo, hi in runs)
    assert padded < 0.7 * len(widths) * widths[-1]
    assert split_by_width([3]) == [(0, 1)]
    assert split_by_width([]) == []  # a step without decodes has no group
