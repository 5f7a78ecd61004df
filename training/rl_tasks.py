"""RL tasks by reference: reasoning-gym datasets, addressed by (dataset, config digest, index), never by text.

A task set is a list of `TaskSpec`s; each has a digest over its canonical JSON (name, config, seed), and every peer
regenerates an entry from its index. Indices of a peer's round are derived from (swarm id, peer id, round, slot),
so a sender cannot choose easy items. Index ranges are disjoint: RL rounds, then warm start, then evaluation.
Knows reasoning-gym, prompt formats and scoring; nothing about models, engines or peers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

INDEX_SPACE = 1 << 20  # RL indices are [0, INDEX_SPACE)
WARM_START_BASE = INDEX_SPACE  # supervised warm start draws from [INDEX_SPACE, 2 * INDEX_SPACE)
EVAL_BASE = 2 * INDEX_SPACE  # the fixed eval set from [2 * INDEX_SPACE, ...)
DATASET_SIZE = 3 * INDEX_SPACE
COMPACT_FORMAT = "compact-v1"  # short prompts for the byte-level embedded model
QUESTION_FORMAT = "question-v1"  # the dataset's own question text, for checkpoints with a real tokenizer
PROMPT_FORMATS = (COMPACT_FORMAT, QUESTION_FORMAT)


@dataclass(frozen=True)
class TaskRef:
    """A task by reference: which dataset config, which entry."""

    dataset: str
    config_digest: str
    index: int


def spec_digest(spec: Any) -> str:
    """sha256 (32 hex digits) of the spec's canonical JSON: every peer with the same spec gets the same digest."""
    body = json.dumps({"name": spec.name, "config": spec.config, "seed": spec.seed}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def task_set_digest(specs: list[Any]) -> str:
    """Digest of the ordered task set (slot derivation depends on the order)."""
    return hashlib.sha256("|".join(spec_digest(s) for s in specs).encode()).hexdigest()[:32]


def check_task_spec(spec: Any) -> None:
    """Raise ValueError when reasoning-gym does not know the dataset or refuses its config."""
    import reasoning_gym

    try:
        reasoning_gym.create_dataset(spec.name, seed=spec.seed, size=1, **spec.config)
    except Exception as err:  # reasoning-gym raises ValueError, KeyError, TypeError, AssertionError on bad configs
        raise ValueError(f"reasoning-gym refuses it: {type(err).__name__}: {err}") from None


def derive_slot(swarm_id: str, peer_id: str, round_index: int, slot: int, num_tasks: int) -> tuple[int, int]:
    """(task position in the set, entry index) of `peer_id`'s `slot` in `round_index`: a hash, not a choice.

    The round's slots walk the task set from a hashed offset, so every task gets its share of each round's
    groups (a round of I groups over T tasks holds I // T or I // T + 1 of each): a hash draw per slot would let
    a round be all of one task, and the round's reward and gradient would swing with the mix, not the policy."""
    offset = hashlib.sha256(f"{swarm_id}|{peer_id}|{round_index}".encode()).digest()
    digest = hashlib.sha256(f"{swarm_id}|{peer_id}|{round_index}|{slot}".encode()).digest()
    position = (int.from_bytes(offset[:8], "big") + slot) % num_tasks
    return position, int.from_bytes(digest[8:16], "big") % INDEX_SPACE


class TaskSet:
    """The node's tasks: regenerates entries, renders prompts and scores completions locally."""

    def __init__(self, specs: list[Any]) -> None:
        import reasoning_gym

        self.specs = list(specs)
        self.digests = [spec_digest(s) for s in self.specs]
        self.digest = task_set_digest(self.specs)
        self.by_digest = {d: i for i, d in enumerate(self.digests)}
        self._datasets = [
            reasoning_gym.create_dataset(s.name, seed=s.seed, size=DATASET_SIZE, **s.config) for s in self.specs
        ]

    def ref(self, position: int, index: int) -> TaskRef:
        return TaskRef(self.specs[position].name, self.digests[position], index)

    def derive(self, swarm_id: str, peer_id: str, round_index: int, slot: int) -> TaskRef:
        position, index = derive_slot(swarm_id, peer_id, round_index, slot, len(self.specs))
        return self.ref(position, index)

    def knows(self, ref: TaskRef) -> bool:
        position = self.by_digest.get(ref.config_digest)
        return position is not None and self.specs[position].name == ref.dataset and 0 <= ref.index < DATASET_SIZE

    def entry(self, ref: TaskRef) -> dict[str, Any]:
        return self._datasets[self.by_digest[ref.config_digest]][ref.index]

    def prompt(self, ref: TaskRef, prompt_format: str = COMPACT_FORMAT) -> str:
        entry = self.entry(ref)
        if prompt_format == QUESTION_FORMAT:
            return entry["question"]
        return compact_prompt(ref.dataset, entry)

    def answer(self, ref: TaskRef) -> str:
        return str(self.entry(ref)["answer"])

    def score(self, ref: TaskRef, completion: str, prompt_format: str = COMPACT_FORMAT) -> float:
        """1.0 when the dataset's own verifier gives the answer extracted from `completion` full marks, else 0.0.

        Strict on purpose: some verifiers give partial credit to an answer that merely contains the right one,
        which invites padding."""
        entry = self.entry(ref)
        answer = completion.strip()
        if prompt_format == QUESTION_FORMAT:
            from reasoning_gym.utils import extract_answer

            answer = extract_answer(completion) or answer
        dataset = self._datasets[self.by_digest[ref.config_digest]]
        try:
            reward = float(dataset.score_answer(answer, entry))
        except Exception:  # a verifier must not fail a round on odd text; unscorable is wrong
            return 0.0
        return 1.0 if reward >= 1.0 else 0.0


def compact_prompt(dataset: str, entry: dict[str, Any]) -> str:
    """A few bytes a byte-level model can learn from: the item's facts from its metadata, no instructions."""
    meta = entry.get("metadata", {})
    if dataset in ("basic_arithmetic", "chain_sum") and "expression" in meta:
        return f"{meta['expression']}="
    if dataset == "spell_backward" and "word" in meta:
        return f"rev {meta['word']}:"
    if dataset == "letter_counting" and "span" in meta:
        return f"count {meta['target_letter']} in {' '.join(meta['span'])}:"
    return str(entry["question"])
