"""The `serving:` section of the node's config: model, KV budget, token budget and SLO knobs.

This module only declares and bounds the settings; it knows nothing about models, threads or the network.
Every field has a default, so `ServingConfig()` is a valid CPU configuration for the embedded model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ServingConfig(BaseModel):
    """Settings of one node's serving engine. Units are part of the names."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("default", min_length=1, description='"default" (embedded model) or a local HF checkpoint dir')
    model_seed: int = Field(0, ge=0, description="seed of the embedded model's weights (every node must agree)")
    device: str = Field("auto", min_length=1, description='"auto" (accelerate picks), "cpu", "cuda", "cuda:1"...')
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description='"auto": the fastest dtype on this device whose greedy output equals float32\'s on a probe'
        " (measured at start, cached with the latency profile)",
    )
    kv_cache_bytes: int = Field(256 * 2**20, gt=0, le=2**40, description="memory for the paged KV cache")
    block_size_tokens: int = Field(16, gt=0, le=1024, description="tokens per KV cache block")
    max_batch_tokens: int = Field(2048, gt=0, le=1 << 20, description="upper bound of tokens in one step")
    max_running_requests: int = Field(128, gt=0, le=4096, description="most requests decoding at once")
    max_waiting_requests: int = Field(1024, gt=0, le=1 << 20, description="queue bound; beyond it: OVERLOADED")
    max_new_tokens_limit: int = Field(4096, gt=0, le=1 << 20, description="largest max_new_tokens accepted")
    min_chunk_tokens: int = Field(16, gt=0, le=1 << 16, description="smallest prefill chunk worth scheduling")
    chunked_prefill: bool = Field(True, description="split long prompts into chunks that share steps with decodes")
    prefix_caching: bool = Field(
        True, description="keep full KV blocks content-hashed after their request ends; reuse them for equal prefixes"
    )
    offline_kv_share: float = Field(
        0.5, gt=0, le=1.0, description="most of the KV cache that offline requests (priority < 0, rollouts) may hold"
    )
    max_n: int = Field(16, gt=0, le=256, description="most samples (n) one request may ask for")
    slo_admission: bool = Field(
        True, description="SLO-aware step budgets and admission (what admission does with a predicted miss: slo_refuse)"
    )
    slo_refuse: bool = Field(
        True,
        description="with slo_admission: refuse predicted misses (false: queue them anyway; steps are still budgeted"
        " for the SLOs, and predictions still learn)",
    )
    ttft_slo_factor: float = Field(
        5.0, gt=0, le=1000, description="bench SLO: k x isolated prefill time of a median prompt"
    )
    tpot_slo_factor: float = Field(5.0, gt=0, le=1000, description="bench SLO: k x isolated single-request decode step")
    admission_headroom: float = Field(
        1.0, gt=0, le=1.0, description="admit only when the predicted TTFT/step time is within this share of target"
    )
    tpot_budget_share: float = Field(
        0.8, gt=0, le=1.0, description="share of a TPOT target that step budgets plan for; the rest absorbs noise"
    )
    default_tpot_ms: float | None = Field(
        None, gt=0, le=1e6, description="TPOT target for requests without one (None: no target)"
    )
    latency_profile_path: str | None = Field(
        None, description="file caching the profiled latency model (None: ~/.cache/swarm/latency/<key>.json)"
    )
    slowdown_factor: float = Field(
        1.0,
        ge=1.0,
        le=100.0,
        description="artificial slowdown: each step lasts factor x its profiled time (routing tests and bench)",
    )
    num_threads: int | None = Field(None, gt=0, le=1024, description="torch CPU threads (None: torch's default)")
    # Every request comes from an HTTP caller or a peer, so its priority is a claim: it is clamped to this range.
    # The default lets a caller defer its own request but not jump ahead of anyone else's.
    min_priority: int = Field(-10, ge=-(2**31), le=2**31, description="lowest priority a request keeps")
    max_priority: int = Field(0, ge=-(2**31), le=2**31, description="highest priority a request keeps")

    @model_validator(mode="after")
    def _priority_range(self) -> ServingConfig:
        if self.min_priority > self.max_priority:
            raise ValueError(
                f"serving.min_priority ({self.min_priority}) must not exceed serving.max_priority ({self.max_priority})"
            )
        return self

    def clamp_priority(self, priority: int) -> int:
        """``priority`` brought into [min_priority, max_priority]."""
        return min(max(priority, self.min_priority), self.max_priority)
