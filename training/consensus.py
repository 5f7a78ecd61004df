"""Whether a peer's outer state still agrees with its group's, and whose state to take when it does not.

After a DiLoCo round, members that started it from the same outer state and received the same averages hold the
same outer state. A peer killed inside an all-reduce (each member keeps its own values for the part the dead peer
reduced) or a round one member missed breaks that, and nothing would bring the members back together. So each
member gathers a digest of the outer state it starts the round from; after the round, a member whose digest is
not the group's reference takes the state of a member that holds it. The reference is the digest most members
hold, ties broken by the lowest peer id holding it, so every member reaches the same answer from the same
gathered data. This module knows nothing about networks: it hashes tensors and compares strings.
"""

from __future__ import annotations

import hashlib

import torch

DIGEST_BYTES = 16


def state_digest(tensors: list[torch.Tensor]) -> str:
    """A hash of the tensors' fp32 values (bitwise: equal digests mean equal states)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for t in tensors:
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy())
    return h.hexdigest()


def reference_peer(me: str, digest: str, round_index: int, members: dict[str, tuple[int, str]]) -> str | None:
    """The member whose state `me` should take after round `round_index`, or None when `me` holds the reference.
    `members` maps each group member to the round it started and the digest it gathered; only members that
    started this same round with a digest take part (a member at another round is caught up otherwise)."""
    starts = {peer: d for peer, (r, d) in members.items() if r == round_index and d}
    starts[me] = digest
    holders: dict[str, list[str]] = {}
    for peer, d in starts.items():
        holders.setdefault(d, []).append(peer)
    reference = min(holders, key=lambda d: (-len(holders[d]), min(holders[d])))
    return None if reference == digest else min(holders[reference])
