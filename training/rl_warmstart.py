"""Supervised warm start for RL: a random-initialised model never earns a reward, so GRPO would see only zero groups.

Full-parameter training on generator items from the warm-start index range (disjoint from RL's and the eval set's),
loss on the answer tokens only, until a probe's mean reward (sampled as rollouts are) reaches a floor, and every
task a third of it, or the step budget ends.
Knows torch and the task set; the model and tokenizer are handed in, saving is the caller's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from training.grpo import Sample, complete, completion_logprobs
from training.rl_tasks import INDEX_SPACE, WARM_START_BASE, TaskRef, TaskSet

log = logging.getLogger(__name__)
PROBE_BASE = WARM_START_BASE + INDEX_SPACE // 2  # probe items: never trained on


@dataclass(frozen=True)
class WarmStartSettings:
    max_steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    reward_floor: float = 0.15
    probe_items: int = 64
    probe_every: int = 10
    max_new_tokens: int = 8
    temperature: float = 1.0  # the probe samples as RL rounds do: a greedy score overstates what rollouts earn
    seed: int = 0


def probe(model: Any, tok: Any, tasks: TaskSet, refs: list[TaskRef], max_new_tokens: int, temperature: float = 1.0,
          seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Mean reward per dataset over `refs` (sampled at `temperature`, seeded), and overall under key "mean"."""
    encode = lambda text: list(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    outs = complete(model, [encode(tasks.prompt(r)) for r in refs], max_new_tokens, int(tok.eos_token_id),
                    int(tok.pad_token_id), temperature, gen)  # fmt: skip
    scores: dict[str, list[float]] = {}
    for ref, ids in zip(refs, outs, strict=True):
        scores.setdefault(ref.dataset, []).append(tasks.score(ref, tok.decode(ids)))
    result = {name: sum(v) / len(v) for name, v in scores.items()}
    result["mean"] = sum(sum(v) for v in scores.values()) / len(refs)
    return result


def warm_start(model: Any, tok: Any, tasks: TaskSet, settings: WarmStartSettings,
               progress: Callable[[str], None] = log.info) -> dict[str, Any]:  # fmt: skip
    """Train `model` in place; returns the steps taken, the last probe and the seconds spent."""
    torch.manual_seed(settings.seed)
    model.float().train()
    encode = lambda text: list(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    n = len(tasks.specs)
    probe_refs = [tasks.ref(i % n, PROBE_BASE + i) for i in range(settings.probe_items)]
    start, result, step = time.monotonic(), {"mean": 0.0}, 0
    eos = int(tok.eos_token_id)
    for step in range(1, settings.max_steps + 1):
        base = WARM_START_BASE + step * settings.batch_size
        refs = [tasks.ref(i % n, base + i) for i in range(settings.batch_size)]
        samples = [Sample(encode(tasks.prompt(r)), [*encode(tasks.answer(r)), eos], 1.0) for r in refs]
        logps, mask = completion_logprobs(model, samples, int(tok.pad_token_id))
        loss = -(logps * mask).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % settings.probe_every == 0 or step == settings.max_steps:
            model.eval()
            result = probe(model, tok, tasks, probe_refs, settings.max_new_tokens, settings.temperature, settings.seed)
            model.train()
            progress(f"warm start step {step}: loss {loss.item():.3f}, probe reward {result['mean']:.3f}")
            per_task = [v for k, v in result.items() if k != "mean"]
            if result["mean"] >= settings.reward_floor and min(per_task) >= settings.reward_floor / 3:
                break  # every task earns some reward: GRPO groups will have variance
    model.eval()
    return {"steps": step, "probe": result, "seconds": time.monotonic() - start}
