"""What group members gathered (round, state digest, pace) is untrusted: mistyped or oversized values count as none.

hivemind cannot be imported in a process that imports libp2p, so the checks run in a fresh interpreter."""

from __future__ import annotations

import pytest

from tests.unit.comms.fresh_interpreter import assert_script_prints_ok

SCRIPT = r"""
from comms.hivemind_worker import MAX_DIGEST_CHARS, MAX_PACE_S, gathered_member, gathered_pace
assert gathered_member({"round": 7, "digest": "ab12"}) == (7, "ab12")
assert gathered_member({"round": 7}) == (7, "")
assert gathered_member({"round": True, "digest": "x"}) == (-1, "x")
assert gathered_member({"round": "7", "digest": 5}) == (-1, "")
assert gathered_member({"round": 1, "digest": "f" * (MAX_DIGEST_CHARS + 1)}) == (1, "")
assert gathered_member(None) == (-1, "") and gathered_member([1, 2]) == (-1, "")
assert gathered_member({"round": 3, "digest": "d", "later_field": 1}) == (3, "d")
assert gathered_pace({"round": 3, "pace_s": 0.25}) == 0.25 and gathered_pace({"pace_s": 2}) == 2.0
for bad in (None, True, "0.2", 0, -1.0, float("nan"), float("inf"), MAX_PACE_S * 2):
    assert gathered_pace({"pace_s": bad}) is None, bad
assert gathered_pace(None) is None and gathered_pace({"round": 3}) is None
print("ok")
"""


@pytest.mark.timeout(60)
def test_mistyped_gathered_values_count_as_none() -> None:
    assert_script_prints_ok(SCRIPT)
