"""`RolloutBatch`: a peer's RL rollouts of one round, on gossip topic `swarm/<swarm_id>/rollouts`.

Tasks travel by reference (dataset, config digest, index), never as question or answer text; rewards are the
sender's claim, advisory only. Structural bounds are checked here; what needs the receiver's state (round window,
task set, replay, bans) is checked by the receiver. Plain data: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.codec import Message, Record
from protocols.errors import ErrorCode, ProtocolError
from protocols.limits import KIB, Limits

MAX_ROLLOUT_GROUPS = 16
MIN_GROUP_SIZE = 2
MAX_GROUP_SIZE = 16
MAX_COMPLETION_BYTES = 2 * KIB
# Declared lengths above these are refused by the decoder before anything is allocated.
ROLLOUT_LIMITS = Limits(max_message_bytes=256 * KIB, max_str_bytes=4 * KIB, max_bin_bytes=MAX_COMPLETION_BYTES,
                        max_array_len=64, max_map_len=32)  # fmt: skip


def _bad(name: str, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST) -> ProtocolError:
    return ProtocolError(code, message, field=name)


@dataclass
class TaskRefRecord(Record):
    """A task by reference: a dataset config the receiver knows, and an entry it regenerates."""

    dataset: str
    config_digest: str
    index: int


@dataclass
class RolloutGroup(Record):
    """G completions of one task, sampled by the sender, with its rewards (advisory)."""

    task: TaskRefRecord
    slot: int
    prompt_format: str
    completions: list[bytes]
    advisory_rewards: list[float]
    seed: int | None = None
    sampler_logprobs: list[float] | None = None  # per completion: sum of the sampled tokens' logprobs

    def validate(self) -> None:
        g = len(self.completions)
        if not MIN_GROUP_SIZE <= g <= MAX_GROUP_SIZE:
            raise _bad("completions", f"{g} completions; a group has {MIN_GROUP_SIZE}..{MAX_GROUP_SIZE}")
        if len(self.advisory_rewards) != g:
            raise _bad("advisory_rewards", f"{len(self.advisory_rewards)} rewards for {g} completions")
        if self.sampler_logprobs is not None and len(self.sampler_logprobs) != g:
            raise _bad("sampler_logprobs", f"{len(self.sampler_logprobs)} values for {g} completions")
        if any(not 0.0 <= r <= 1.0 for r in self.advisory_rewards):
            raise _bad("advisory_rewards", "rewards lie in [0, 1]")
        if self.slot < 0 or self.task.index < 0:
            raise _bad("slot", "slot and task index are >= 0")


@dataclass
class RolloutBatch(Message):
    """One peer's groups of one round. Receivers re-score every completion themselves."""

    TYPE = "rollout_batch"
    VERSION = (1, 0)

    peer_id: str
    round: int
    policy_version: int
    model_hash: str
    task_set_digest: str
    groups: list[RolloutGroup] = field(default_factory=list)

    def validate(self) -> None:
        if not self.peer_id:
            raise _bad("peer_id", "must not be empty")
        if self.round < 0 or self.policy_version < 0:
            raise _bad("round", "round and policy_version are >= 0")
        if len(self.groups) > MAX_ROLLOUT_GROUPS:
            raise _bad("groups", f"{len(self.groups)} groups, limit is {MAX_ROLLOUT_GROUPS}", ErrorCode.TOO_LARGE)

    def num_completions(self) -> int:
        return sum(len(g.completions) for g in self.groups)
