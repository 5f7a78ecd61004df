"""The `rl:` section of the node's config: rollout sharing with GRPO on a LoRA adapter.

Declares and bounds the settings (tasks, group counts, sampling, optimiser, trust thresholds); a bad value names
the field. Knows nothing about peers, engines or models.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TASKS: list[dict[str, Any]] = [
    {"name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1,
                                            "operators": ["+", "-"]}},
    {"name": "chain_sum", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
    {"name": "spell_backward", "config": {"min_word_len": 3, "max_word_len": 4}},
    {"name": "letter_counting", "config": {"min_words": 3, "max_words": 5}},
]  # fmt: skip


class TaskSpec(BaseModel):
    """One reasoning-gym dataset: its name, its generator config and the seed every peer uses."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, description="reasoning-gym dataset name")
    config: dict[str, Any] = Field(default_factory=dict, description="the dataset's config keyword arguments")
    seed: int = Field(0, ge=0, lt=2**31, description="dataset seed (part of the config digest)")


class RLConfig(BaseModel):
    """Rollout sharing: each round trains on `local_groups` own groups and up to `external_groups` peers' groups."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[TaskSpec] = Field(
        default_factory=lambda: [TaskSpec(**t) for t in DEFAULT_TASKS],
        min_length=1,
        max_length=64,
        description="task set; peers must agree (its digest travels)",
    )
    local_groups: int = Field(4, ge=1, le=64, description="I: groups of own completions per round")
    external_groups: int = Field(4, ge=0, le=64, description="J: peers' groups drawn per round")
    num_generations: int = Field(4, ge=2, le=16, description="G: completions per group")
    max_new_tokens: int = Field(8, ge=1, le=512, description="longest completion, in tokens")
    temperature: float = Field(1.0, gt=0, le=10, description="sampling temperature of rollouts")
    priority: int = Field(-20, ge=-(2**31), le=2**31, description="engine priority of rollout requests (low)")
    lr: float = Field(2e-3, gt=0, le=1.0, description="AdamW learning rate of the LoRA adapter")
    lora_r: int = Field(8, ge=1, le=256, description="LoRA rank")
    lora_alpha: float = Field(16.0, gt=0, le=4096, description="LoRA alpha (scale alpha / r)")
    eps_low: float = Field(0.2, ge=0, le=1, description="PPO clip below 1")
    eps_high: float = Field(0.28, ge=0, le=10, description="PPO clip above 1 (DAPO clip-higher)")
    staleness_rounds: int = Field(2, ge=0, le=100, description="accept peers' rounds in [r - this, r + 1]")
    round_wait_s: float = Field(10.0, ge=0, le=600, description="soft barrier: wait this long for peers' batches")
    start_peers: int = Field(0, ge=0, le=1024, description="before round 0, wait for this many other rl peers")
    start_wait_s: float = Field(60.0, ge=0, le=3600, description="... for at most this long")
    max_rounds: int | None = Field(None, ge=1, description="stop after this many rounds (None: run on)")
    ban_reject_fraction: float = Field(0.25, gt=0, le=1, description="ban a peer whose rejected share exceeds this")
    ban_min_groups: int = Field(8, ge=1, le=10_000, description="... once it sent at least this many groups")
    ban_rounds: int = Field(20, ge=1, le=100_000, description="rounds a banned peer is ignored")
    trust_advisory: bool = Field(False, description="use senders' rewards unchecked (bench arm that shows the attack)")
    seed: int = Field(0, ge=0, lt=2**31, description="seed of sampling and selection")
    checkpoint_dir: Path | None = Field(None, description="adapter checkpoints (None: ~/.cache/swarm/rl/<peer id>)")
    eval_items: int = Field(0, ge=0, le=4096, description="greedy eval items scored every eval_every rounds")
    eval_every: int = Field(10, ge=1, le=100_000, description="rounds between greedy evals")
    log_file: Path | None = Field(None, description="append one JSON line per round here (bench)")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, value: list[TaskSpec]) -> list[TaskSpec]:
        from training.rl_tasks import check_task_spec

        for i, spec in enumerate(value):
            try:
                check_task_spec(spec)
            except ValueError as err:
                raise ValueError(f"tasks[{i}] ({spec.name}): {err}") from None
        return value

    @model_validator(mode="after")
    def _clip(self) -> RLConfig:
        if self.eps_low >= 1:
            raise ValueError(f"rl.eps_low must be < 1, got {self.eps_low}")
        return self

    @property
    def per_peer_cap(self) -> int:
        """At most this many of one peer's groups per round: ceil(J / 2), so no single peer fills the batch."""
        return max(1, math.ceil(self.external_groups / 2))
