"""Profiles the runner into a latency model at engine start, or loads the one cached for this exact setup; the
same for the serving dtype `auto` picks (see dtype_choice), cached beside it.

The cache key names the model hash, device, dtype, thread count, block size and torch version, so a cached
profile is only reused where it was measured. This module knows how to time synthetic steps, not what they mean.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

from serving import dtype_choice
from serving.config import ServingConfig
from serving.latency import LatencyModel, StepShape, cache_key, load_cached, profile, profile_shapes, save_cached
from serving.plan import SamplingSpec, ScheduledChunk, SchedulerOutput
from serving.runner import ModelRunner

log = logging.getLogger(__name__)


def synthetic_plan(shape: StepShape, num_blocks: int, block_size: int) -> SchedulerOutput:
    """A plan computing `shape` over scratch blocks (cycled: contents do not matter for timing)."""
    chunks = []
    next_block = 0
    for i, (n, ctx) in enumerate(shape):
        need = -(-ctx // block_size)
        table = [(next_block + j) % num_blocks for j in range(need)]
        next_block += need
        chunks.append(ScheduledChunk(f"profile-{i}", [0] * n, ctx - n, table, True, SamplingSpec()))
    return SchedulerOutput(chunks)


def default_cache_path(key: str) -> Path:
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "swarm" / "latency" / f"{digest}.json"


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()


def load_or_choose_dtype(
    hf_model: torch.nn.Module, cfg: ServingConfig, model_hash: str, device: torch.device
) -> dtype_choice.DtypeChoice:
    """The dtype `auto` serves in on this device: the cached choice for this setup, or a fresh measurement."""
    key = cache_key(
        {
            "model_hash": model_hash,
            "device": str(device),
            "device_name": _device_name(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    )
    if cfg.latency_profile_path:
        path = Path(cfg.latency_profile_path).with_suffix(".dtype.json")
    else:
        path = default_cache_path(key).with_name(f"dtype-{default_cache_path(key).name}")
    cached = dtype_choice.load_cached(path, key)
    if cached is not None:
        return cached
    choice = dtype_choice.choose(hf_model, device, key)
    try:
        dtype_choice.save_cached(path, choice)
    except OSError as err:  # a read-only home must not stop serving
        log.warning("could not cache the dtype choice at %s: %s", path, err)
    return choice


def load_or_profile(
    runner: ModelRunner, cfg: ServingConfig, model_hash: str, device: torch.device, dtype: torch.dtype
) -> LatencyModel:
    key = cache_key(
        {
            "model_hash": model_hash,
            "device": str(device),
            "device_name": _device_name(device),
            "dtype": str(dtype),
            "threads": torch.get_num_threads(),
            "block_size": cfg.block_size_tokens,
            "max_batch_tokens": cfg.max_batch_tokens,
            "torch": torch.__version__,
        }
    )
    path = Path(cfg.latency_profile_path) if cfg.latency_profile_path else default_cache_path(key)
    cached = load_cached(path, key)
    if cached is not None:
        return cached
    shapes = profile_shapes(cfg.max_batch_tokens, runner.max_context)
    nb, bs = runner.kv.num_blocks, runner.block_size
    model = profile(lambda shape: runner.execute(synthetic_plan(shape, nb, bs)), shapes, key=key)
    log.info("profiled latency model %s", model.coefficients)
    try:
        save_cached(path, model)
    except OSError as err:  # a read-only home must not stop serving
        log.warning("could not cache the latency profile at %s: %s", path, err)
    return model
