"""Next-token choice from logits: greedy, temperature, top-k, top-p, with one seeded generator per request.

This module knows nothing about requests or batches beyond one row of logits per sampled request.
"""

from __future__ import annotations

import torch

from serving.plan import SamplingSpec


def make_generator(spec: SamplingSpec, device: torch.device) -> torch.Generator:
    """A generator seeded from the request's seed, or from fresh entropy when it has none."""
    gen = torch.Generator(device=device)
    if spec.seed is None:
        gen.seed()
    else:
        gen.manual_seed(spec.seed)
    return gen


def filter_logits(logits: torch.Tensor, spec: SamplingSpec) -> torch.Tensor:
    """Scale one row of float32 logits by 1/temperature and mask what top-k and top-p exclude with -inf."""
    logits = logits / spec.temperature
    if 0 < spec.top_k < logits.shape[-1]:
        kth = torch.topk(logits, spec.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if spec.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token when the mass before it already does.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= spec.top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_rows(logits: torch.Tensor, specs: list[SamplingSpec], generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of `logits` ([N, vocab]); greedy rows are decided together by one argmax."""
    logits = logits.float()
    chosen = logits.argmax(dim=-1)
    for i, spec in enumerate(specs):
        if spec.greedy:
            continue
        probs = torch.softmax(filter_logits(logits[i], spec), dim=-1)
        chosen[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return chosen.tolist()
