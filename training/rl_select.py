"""Receiving peers' rollouts without trusting them: cheap gate checks, local re-scoring, selection, bans.

`RolloutGate.admit` runs in the gossip topic validator: it decodes within `ROLLOUT_LIMITS`, checks the signer,
the round window, replays, bans and sizes, and keeps what passes for the round loop (so bad batches are neither
relayed nor used). `verify_batch` regenerates every task from its reference and re-scores every completion;
`select_external` draws J groups with a seeded RNG, at most `per_peer_cap` from one peer, datasets the node's own
groups gave no signal on first. Knows the task set and
the message; nothing about models, engines or sockets.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols import ROLLOUT_LIMITS, ProtocolError, decode_as
from protocols.errors import ErrorCode
from protocols.rollouts import RolloutBatch, RolloutGroup
from training.rl_tasks import PROMPT_FORMATS, TaskRef, TaskSet

log = logging.getLogger(__name__)
REWARD_TOLERANCE = 1e-6
LATE_REASONS = ("stale", "future")  # a slow or restarted honest peer sends these too
MAX_SLOT = 64  # slots are below the sender's rl.local_groups, itself at most 64


@dataclass
class Candidate:
    """An external group that passed re-scoring: our rewards, our token ids."""

    peer_id: str
    round: int
    slot: int
    ref: TaskRef
    prompt_format: str
    completions: list[str]
    rewards: list[float]


@dataclass
class RLCounters:
    """What this node's RL role received, refused, filtered and used; by reason and by sender."""

    rounds: int = 0
    mean_reward: float = 0.0
    groups_received: int = 0
    groups_filtered: int = 0
    groups_used: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    late: Counter[str] = field(default_factory=Counter)  # batches outside the round window: timing, not lies
    received_from: Counter[str] = field(default_factory=Counter)
    rejected_from: Counter[str] = field(default_factory=Counter)
    used_from: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reject(self, origin: str, reason: str, groups: int) -> None:
        log.info("rl: refused %d group(s) from %s: %s", groups, origin[-8:], reason)
        with self.lock:
            if reason in LATE_REASONS:
                self.late[reason] += groups
                return
            self.rejected[reason] += groups
            self.rejected_from[origin] += groups

    @property
    def groups_rejected(self) -> int:
        return sum(self.rejected.values())


class Reputation:
    """Per peer: groups received and rejected since its last ban; above the threshold it is banned for a while."""

    def __init__(self, reject_fraction: float, min_groups: int, ban_rounds: int) -> None:
        self.reject_fraction, self.min_groups, self.ban_rounds = reject_fraction, min_groups, ban_rounds
        self.seen: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.banned_until: dict[str, int] = {}

    def record(self, peer_id: str, groups: int, rejected: int, round_index: int) -> None:
        self.seen[peer_id] += groups
        self.bad[peer_id] += rejected
        seen, bad = self.seen[peer_id], self.bad[peer_id]
        if seen >= self.min_groups and bad > self.reject_fraction * seen:
            self.banned_until[peer_id] = round_index + self.ban_rounds
            self.seen[peer_id] = self.bad[peer_id] = 0

    def banned(self, peer_id: str, round_index: int) -> bool:
        return self.banned_until.get(peer_id, -1) >= round_index


class RolloutGate:
    """Cheap checks of gossiped batches, and the inbox of those that passed, by round."""

    def __init__(self, cfg, tasks: TaskSet, own_peer_id: str, model_hash: str, counters: RLCounters) -> None:
        self.cfg, self.tasks, self.own_peer_id, self.model_hash = cfg, tasks, own_peer_id, model_hash
        self.counters = counters
        self.reputation = Reputation(cfg.ban_reject_fraction, cfg.ban_min_groups, cfg.ban_rounds)
        self.round = 0  # the round loop's current round, set by it
        self._seen: set[tuple[str, int]] = set()
        self._inbox: dict[int, list[RolloutBatch]] = defaultdict(list)
        self._cond = threading.Condition()

    def admit(self, origin: str, data: bytes) -> bool:
        """Topic validator: True keeps (and relays) the batch. Refusals are counted by reason, in groups."""
        if origin == self.own_peer_id:
            return True
        with self.counters.lock:
            self.counters.bytes_in += len(data)
        try:
            batch = decode_as(data, RolloutBatch, limits=ROLLOUT_LIMITS)
        except ProtocolError as err:
            reason = "oversized" if err.code == ErrorCode.TOO_LARGE else "malformed"
            self._refuse(origin, reason, 1)
            return False
        reason = self._cheap_reason(origin, batch)
        if reason is not None:
            self._refuse(origin, reason, max(1, len(batch.groups)))
            return False
        with self._cond:
            self._seen.add((origin, batch.round))
            self._inbox[batch.round].append(batch)
            horizon = self.round - self.cfg.staleness_rounds - 1
            for old in [r for r in self._inbox if r < horizon]:
                del self._inbox[old]
            self._seen = {s for s in self._seen if s[1] >= horizon}
            self._cond.notify_all()
        return True

    def _refuse(self, origin: str, reason: str, groups: int) -> None:
        with self.counters.lock:
            self.counters.received_from[origin] += groups
            self.counters.groups_received += groups
        self.counters.reject(origin, reason, groups)

    def _cheap_reason(self, origin: str, batch: RolloutBatch) -> str | None:
        cfg = self.cfg
        if batch.peer_id != origin:
            return "forged_origin"
        with self._cond:
            r = self.round
            if self.reputation.banned(origin, r):
                return "banned"
            if (origin, batch.round) in self._seen:
                return "replayed"
        if batch.round < r - cfg.staleness_rounds:
            return "stale"
        if batch.round > r + 1:
            return "future"
        if batch.model_hash != self.model_hash:
            return "other_model"
        if batch.task_set_digest != self.tasks.digest:
            return "unknown_task"
        limit = cfg.max_new_tokens * 4  # bytes: no token of a tokenizer we serve spans more than 4 UTF-8 bytes
        if any(len(c) > limit for g in batch.groups for c in g.completions):
            return "too_long"
        if any(len(g.completions) != cfg.num_generations for g in batch.groups):
            return "group_size"
        return None

    def take(
        self, round_index: int, expected: set[str], timeout_s: float, should_stop: Callable[[], bool]
    ) -> list[RolloutBatch]:
        """Batches for rounds in the staleness window not taken yet; waits up to `timeout_s` for `expected` peers'
        batches of `round_index` (a soft barrier: a silent or dead peer only costs the wait)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not should_stop():
                have = {b.peer_id for b in self._inbox.get(round_index, [])}
                left = deadline - time.monotonic()
                if expected <= have or left <= 0:
                    break
                self._cond.wait(min(left, 0.25))
            low = round_index - self.cfg.staleness_rounds
            taken = [b for r in sorted(self._inbox) if low <= r <= round_index for b in self._inbox.pop(r)]
        return taken

    def set_round(self, round_index: int) -> None:
        with self._cond:
            self.round = round_index


def verify_batch(batch: RolloutBatch, tasks: TaskSet, swarm_id: str, cfg, encode: Callable[[str], list[int]],
                 counters: RLCounters, reputation: Reputation) -> list[Candidate]:  # fmt: skip
    """Regenerate and re-score every group; returns the groups with reward variance. Rejections strike the peer."""
    out: list[Candidate] = []
    slots: set[int] = set()
    rejected = 0
    for group in batch.groups:
        reason, cand = _verify_group(batch, group, tasks, swarm_id, cfg, encode, slots)
        if reason == "filtered":
            with counters.lock:
                counters.groups_filtered += 1
        elif reason is not None:
            rejected += 1
            counters.reject(batch.peer_id, reason, 1)
        elif cand is not None:
            out.append(cand)
    with counters.lock:
        counters.groups_received += len(batch.groups)
        counters.received_from[batch.peer_id] += len(batch.groups)
    reputation.record(batch.peer_id, len(batch.groups), rejected, batch.round)
    return out


def _verify_group(batch, group: RolloutGroup, tasks: TaskSet, swarm_id, cfg, encode, slots: set[int]):
    ref = TaskRef(group.task.dataset, group.task.config_digest, group.task.index)
    if not tasks.knows(ref) or group.prompt_format not in PROMPT_FORMATS:
        return "unknown_task", None
    if group.slot in slots or group.slot >= MAX_SLOT:
        return "duplicate_task", None
    slots.add(group.slot)
    if tasks.derive(swarm_id, batch.peer_id, batch.round, group.slot) != ref:
        return "task_not_derived", None
    try:
        texts = [c.decode("utf-8") for c in group.completions]
    except UnicodeDecodeError:
        return "malformed", None
    if any(len(encode(t)) > cfg.max_new_tokens for t in texts):
        return "too_long", None
    rewards = [tasks.score(ref, t, group.prompt_format) for t in texts]
    if cfg.trust_advisory:
        rewards = list(group.advisory_rewards)
    elif any(abs(a - b) > REWARD_TOLERANCE for a, b in zip(rewards, group.advisory_rewards, strict=True)):
        return "reward_mismatch", None
    if max(rewards) - min(rewards) <= REWARD_TOLERANCE:
        return "filtered", None
    return None, Candidate(batch.peer_id, batch.round, group.slot, ref, group.prompt_format, texts, rewards)


def select_external(candidates: list[Candidate], count: int, per_peer_cap: int, seed: int,
                    covered: frozenset[str] = frozenset()) -> list[Candidate]:  # fmt: skip
    """Draw `count` groups: candidates sorted (arrival order does not matter), shuffled with `seed`, at most
    `per_peer_cap` per peer and one per task reference. Groups of datasets not in `covered` (those where the
    node's own groups of the round had reward variance) come first: a dataset whose own groups all scored alike
    gave the step no signal, and a peer's group of it is the one that brings some; an easy dataset, whose groups
    vary most often, would otherwise fill the draw."""
    pool = sorted(candidates, key=lambda c: (c.peer_id, c.round, c.slot))
    random.Random(seed).shuffle(pool)
    pool.sort(key=lambda c: c.ref.dataset in covered)  # stable: the shuffled order within each part
    picked: list[Candidate] = []
    per_peer: Counter[str] = Counter()
    refs: set[TaskRef] = set()
    for cand in pool:
        if len(picked) == count:
            break
        if per_peer[cand.peer_id] >= per_peer_cap or cand.ref in refs:
            continue
        picked.append(cand)
        per_peer[cand.peer_id] += 1
        refs.add(cand.ref)
    return picked
