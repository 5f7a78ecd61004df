"""Training section of the node's configuration (`training:` in NodeConfig).

Every field has a default, so `TrainingConfig()` is a valid configuration; bounds are checked by pydantic
and a bad value names the field. This module knows nothing about peers or sockets: it describes a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OuterOptimizerName = Literal["diloco", "noloco", "streaming"]
PrecisionName = Literal["auto", "fp32", "bf16"]
CodecName = Literal["fp32", "fp16", "bf16", "int8", "int4", "int2"]


class ModelShape(BaseModel):
    """Shape of the small Llama trained by default, built in code by serving's builder with its byte tokenizer
    (vocabulary: the 256 bytes, then BOS, EOS and PAD), seeded: every peer derives the same weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(64, ge=8, le=16384)
    intermediate_size: int = Field(176, ge=8, le=65536)
    num_layers: int = Field(2, ge=1, le=256)
    num_heads: int = Field(4, ge=1, le=256)
    max_position_embeddings: int = Field(512, ge=8, le=1_000_000)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> ModelShape:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")
        return self


class TrainingConfig(BaseModel):
    """One training run: inner loop, outer optimizer, exchange codec, averaging timeouts and checkpoints."""

    model_config = ConfigDict(extra="forbid")

    model: ModelShape | str = Field(
        default_factory=ModelShape,
        description="a shape (built in code), an embedded model's name (default, tiny) or a local Hugging Face "
        "checkpoint directory (Llama, Mistral, Qwen2, Qwen3) with its tokenizer, to continue or fine-tune",
    )
    device: str = Field(
        "auto",
        min_length=1,
        description='the inner loop\'s device: "auto" (placement decides), "cpu", "cuda" (the current one), "cuda:1"',
    )
    outer_optimizer: OuterOptimizerName = "diloco"
    # inner loop (AdamW with warm-up then cosine decay)
    inner_steps: int = Field(50, ge=1, le=1_000_000, description="H: inner steps per outer round")
    inner_lr: float = Field(3e-3, gt=0.0, le=1.0)
    inner_weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_steps: int = Field(20, ge=0, le=1_000_000)
    total_steps: int = Field(1000, ge=1, le=100_000_000, description="inner steps of the whole run (cosine)")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip_norm: float = Field(1.0, gt=0.0, le=1e6)
    batch_size: int = Field(8, ge=1, le=65536, description="sequences per inner step per peer")
    seq_len: int = Field(64, ge=2, le=1_000_000, description="tokens per sequence")
    # outer optimizers
    outer_lr: float = Field(0.7, gt=0.0, le=10.0)
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    noloco_lr: float = Field(0.7, gt=0.0, le=10.0, description="NoLoCo alpha")
    noloco_momentum: float = Field(0.5, ge=0.0, lt=1.0, description="NoLoCo beta")
    noloco_pull: float = Field(0.5, ge=0.0, le=1.0, description="NoLoCo gamma: pull toward the pair's weights")
    num_fragments: int = Field(4, ge=1, le=1024, description="P: strided fragments for streaming DiLoCo")
    overlap_steps: int = Field(1, ge=0, le=1_000_000, description="tau: inner steps that overlap an exchange")
    merge_alpha: float = Field(0.5, ge=0.0, le=1.0, description="streaming: weight of the synced fragment")
    precision: PrecisionName = Field("auto", description="auto: bf16 autocast on CUDA, fp32 elsewhere")
    # exchange
    codec: CodecName = "fp16"
    codec_block_size: int = Field(64, ge=8, le=1 << 20, description="values per block (int8/int4/int2)")
    error_feedback: bool = Field(False, description="add what the codec lost from a fragment last exchange to the next")
    target_group_size: int = Field(64, ge=2, le=4096)
    min_group_size: int = Field(2, ge=2, le=4096)
    matchmaking_time_s: float = Field(2.0, gt=0.0, le=600.0)
    round_timeout_s: float = Field(60.0, gt=0.0, le=86400.0)
    allreduce_timeout_s: float = Field(30.0, gt=0.0, le=86400.0)
    request_timeout_s: float = Field(3.0, gt=0.0, le=600.0)
    averager_restart_backoff_s: float = Field(
        2.0, gt=0.0, le=3600.0, description="wait before retrying a failed restart of the averaging process (doubles)"
    )
    averager_max_restart_failures: int = Field(
        5, ge=0, le=1000, description="consecutive failed restarts of the averaging process before the role fails"
    )
    # data and checkpoints
    data_path: Path | None = Field(None, description="text or jsonl file/dir; default: interpreter's stdlib")
    max_corpus_bytes: int = Field(4_000_000, ge=1024, le=1 << 40)
    data_shards: int = Field(16, ge=1, le=1_000_000, description="shards the train split is cut into")
    data_shard: int | None = Field(None, ge=0, description="this peer's shard (None: derived from its PeerID)")
    eval_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    eval_batches: int = Field(8, ge=1, le=100_000)
    checkpoint_dir: Path | None = None
    keep_checkpoints: int = Field(2, ge=1, le=1000)
    discovery_wait_s: float = Field(
        6.0,
        ge=0.0,
        le=86400.0,
        description="listen this long for training peers' averaging addresses before starting alone",
    )
    start_peers: int = Field(0, ge=0, le=4096, description="before the first step, wait for this many other peers")
    start_wait_s: float = Field(120.0, ge=0.0, le=86400.0, description="... for at most this long")
    seed: int = Field(0, ge=0)

    @field_validator("model")
    @classmethod
    def _model_source(cls, value: ModelShape | str) -> ModelShape | str:
        if isinstance(value, str):
            from training.model import check_model_source  # loads a tokenizer: only when a name or path is given

            check_model_source(value)
        return value

    def context_length(self) -> int:
        """Most positions the model takes (its config's max_position_embeddings)."""
        if isinstance(self.model, ModelShape):
            return self.model.max_position_embeddings
        from training.model import source_context_length

        return source_context_length(self.model)

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if self.min_group_size > self.target_group_size:
            raise ValueError(f"min_group_size={self.min_group_size} exceeds target_group_size={self.target_group_size}")
        if self.seq_len > (context := self.context_length()):
            raise ValueError(f"seq_len={self.seq_len} exceeds model.max_position_embeddings={context}")
        if self.data_shard is not None and self.data_shard >= self.data_shards:
            raise ValueError(f"data_shard={self.data_shard} must be < data_shards={self.data_shards}")
        if self.inner_steps > self.total_steps:
            raise ValueError(
                f"inner_steps={self.inner_steps} exceeds total_steps={self.total_steps}: no outer round would complete"
            )
        if self.outer_optimizer == "streaming":
            if self.overlap_steps >= self.inner_steps:
                raise ValueError(f"overlap_steps={self.overlap_steps} must be < inner_steps={self.inner_steps}")
            if self.num_fragments > self.inner_steps:  # fragments would share a sync step, or never get one
                raise ValueError(
                    f"num_fragments={self.num_fragments} exceeds inner_steps={self.inner_steps}: each fragment needs "
                    "its own sync step within H"
                )
        return self
