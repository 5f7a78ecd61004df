"""The compute limit of decoding on this device: its measured matmul rate over the FLOPs one token costs.

For a model this small, decoding at saturation is bound by arithmetic, not memory: the batch shares each weight
read. One token costs about 2 FLOPs per weight of the matmuls (every linear layer and the LM head; the
embedding lookup computes nothing) plus the attention over its context. The matmul rate is measured here, in the
serving dtype and thread count, on a square-ish GEMM of the model's own width. This module knows FLOPs and
timing; what a bench does with the fraction is its business.
"""

from __future__ import annotations

import time

import torch

REPEATS = 20


def matmul_flops_per_s(dtype: torch.dtype, device: torch.device, width: int, rows: int = 256) -> float:
    """Measured rate of a (rows x width) @ (width x 4*width) matmul on `device` in `dtype`."""
    a = torch.randn(rows, width, dtype=dtype, device=device)
    b = torch.randn(width, 4 * width, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(REPEATS):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 2 * rows * width * 4 * width * REPEATS / (time.perf_counter() - start)


def flops_per_token(hf_model: torch.nn.Module, mean_context: int) -> float:
    """Matmul FLOPs of one token: 2 per weight of every linear layer, plus QK^T and AV over `mean_context`."""
    weights = sum(m.weight.numel() for m in hf_model.modules() if isinstance(m, torch.nn.Linear))
    cfg = hf_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 2 * 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * mean_context
    return 2.0 * weights + attention


def compute_limit(hf_model: torch.nn.Module, dtype: torch.dtype, device: torch.device, mean_context: int) -> dict:
    """Tokens per second this device could decode if it did nothing but the model's matmuls."""
    rate = matmul_flops_per_s(dtype, device, int(hf_model.config.hidden_size))
    per_token = flops_per_token(hf_model, mean_context)
    return {"matmul_gflop_s": rate / 1e9, "gflop_per_token": per_token / 1e9, "tokens_per_s": rate / per_token}
