"""Next-token choice from logits: penalties, greedy, temperature, top-k, top-p, with one seeded generator per
request; and the log-probabilities reported to callers.

This module knows nothing about requests or batches beyond one row of logits (and, for penalties, the token
history) per sampled request.
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


History = tuple[list[int], list[int]]  # (prompt ids, output ids)


def apply_penalties(logits: torch.Tensor, spec: SamplingSpec, history: History) -> torch.Tensor:
    """One row of float32 logits with the request's penalties applied: repetition (vLLM/HF: over prompt and
    output tokens, positive logits divided, negative multiplied), then presence and frequency (OpenAI: over the
    output so far, minus presence once and frequency per occurrence)."""
    prompt_ids, output_ids = history
    logits = logits.clone()
    if spec.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long, device=logits.device)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / spec.repetition_penalty, values * spec.repetition_penalty)
    if output_ids and (spec.presence_penalty or spec.frequency_penalty):
        ids = torch.tensor(output_ids, dtype=torch.long, device=logits.device)
        counts = torch.bincount(ids, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
        logits -= spec.frequency_penalty * counts + spec.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def sample_rows(
    logits: torch.Tensor,
    specs: list[SamplingSpec],
    generators: list[torch.Generator | None],
    histories: list[History | None] | None = None,
) -> list[int]:
    """One token per row of `logits` ([N, vocab]); greedy rows without penalties are decided by one argmax."""
    logits = logits.float()
    chosen = logits.argmax(dim=-1)
    for i, spec in enumerate(specs):
        history = histories[i] if histories is not None else None
        if spec.greedy and not (spec.penalized and history is not None):
            continue
        row = apply_penalties(logits[i], spec, history) if spec.penalized and history is not None else logits[i]
        if spec.greedy:
            chosen[i] = row.argmax()
            continue
        probs = torch.softmax(filter_logits(row, spec), dim=-1)
        chosen[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return chosen.tolist()


def token_logprobs(
    logits: torch.Tensor, tokens: list[int], tops: list[int]
) -> list[tuple[float, list[tuple[int, float]]]]:
    """For row i of `logits` ([N, vocab]): the log-probability of `tokens[i]` under the raw model distribution
    (log_softmax of the logits, before any penalty, temperature or filter, as vLLM reports by default), and the
    `tops[i]` most likely tokens with theirs."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(tokens, device=logits.device)[:, None])[:, 0].tolist()
    k = max(tops, default=0)
    best = torch.topk(logprobs, k, dim=-1) if k else None
    out = []
    for i, (lp, top) in enumerate(zip(picked, tops, strict=True)):
        alts = []
        if best is not None and top:
            alts = list(zip(best.indices[i, :top].tolist(), best.values[i, :top].tolist(), strict=True))
        out.append((lp, alts))
    return out
