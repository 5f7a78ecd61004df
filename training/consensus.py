"""Whether a peer's outer state still agrees with its group's, and whose state to take when it does not.

After a DiLoCo round, members that started it from the same outer state and received the same averages hold the
same outer state. A peer killed inside an all-reduce (each member keeps its own values for the part the dead peer
reduced) or a round one member missed breaks that, and nothing would bring the members back together. So each
member gathers a digest of the outer state it starts the round from; after the round, a member whose digest is
not the group's reference takes the state of a member that holds it. The reference is the digest most members
hold, ties broken by the lowest peer id holding it, so every member reaches the same answer from the same
gathered data.

Every claim here comes from peers: the round the group is at is the lower median of the rounds its members claim
(`group_round`), so one peer claiming a later round moves nobody; a state is taken only from a donor whose claimed
(round, step, digest) is the one most candidate donors claim (`majority_donors`), and the trainer recomputes the
digest of what it downloaded. This module knows nothing about networks: it hashes tensors and compares strings.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, NamedTuple

import torch

from comms.robust_average import lower_median

DIGEST_BYTES = 16


def state_digest(tensors: list[torch.Tensor]) -> str:
    """A hash of the tensors' fp32 values (bitwise: equal digests mean equal states)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for t in tensors:
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy())
    return h.hexdigest()


def reference_holders(me: str, digest: str, round_index: int, members: dict[str, tuple[int, str]]) -> list[str]:
    """The members (sorted) holding the reference digest of round `round_index`, whose state `me` should take
    after the round; [] when `me` holds the reference. `members` maps each group member to the round it started
    and the digest it gathered; only members that started this same round with a digest take part (a member at
    another round is caught up otherwise)."""
    starts = {peer: d for peer, (r, d) in members.items() if r == round_index and d}
    starts[me] = digest
    holders: dict[str, list[str]] = {}
    for peer, d in starts.items():
        holders.setdefault(d, []).append(peer)
    reference = min(holders, key=lambda d: (-len(holders[d]), min(holders[d])))
    return [] if reference == digest else sorted(holders[reference])


def group_round(me: str, round_index: int, members: dict[str, tuple[int, str]]) -> int:
    """The round the group is at: the lower median of the rounds its members started (`me` at `round_index`;
    members that sent no round left out). A later round counts only when a majority of the group claims it, so
    one peer claiming round 10**9 neither drags the others into a catch-up nor ends their run."""
    rounds = [r for peer, (r, _) in members.items() if peer != me and r >= 0]
    return int(lower_median([*rounds, round_index]))


class StateClaim(NamedTuple):
    """What a donor's metadata says about the state it shares."""

    round_index: int
    step: int
    digest: str


def state_claim(metadata: Any, inner_steps: int, model_hash: str) -> StateClaim | None:
    """The claim in a donor's metadata, or None when it is malformed, for another model, or inconsistent: a
    state is shared at the end of a round, so its step lies in the round it names (a step far past the round is
    a jump no honest peer makes)."""
    if not isinstance(metadata, dict) or metadata.get("model_hash") != model_hash:
        return None
    rnd, step, digest = metadata.get("round"), metadata.get("step"), metadata.get("digest")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rnd, step)) or not isinstance(digest, str):
        return None
    if rnd < 0 or step < 0 or step // inner_steps != rnd or len(digest) != 2 * DIGEST_BYTES:
        return None
    return StateClaim(rnd, step, digest)


def majority_donors(claims: dict[str, StateClaim]) -> list[str]:
    """The donors (sorted) that make the claim most donors make; a tie goes to the earlier round, then to the
    claim of the lowest peer id, so a tie never moves a peer forward. [] without claims."""
    if not claims:
        return []
    counts = Counter(claims.values())
    first = {c: min(p for p, pc in claims.items() if pc == c) for c in counts}
    best = min(counts, key=lambda c: (-counts[c], c.round_index, first[c]))
    return sorted(p for p, c in claims.items() if c == best)
