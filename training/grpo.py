"""GRPO on a LoRA adapter, with TRL's semantics: group advantages, clipped token-level objective, beta 0.

Advantage of completion i of a group: (r_i - mean(r)) / (std(r) + 1e-4), std unbiased as torch.std (TRL's
scale_rewards="group"). Loss: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) per completion token,
summed over the batch's tokens and divided by their count (TRL's "dapo"/"bnpo" normalisation for one step), no
KL term (beta 0: the reference, the adapter disabled, is never evaluated). One optimiser step per round, so the
old policy is the current one detached (ratio 1 in value, its gradient the policy gradient).
Knows torch and peft; the model and tokenizer are handed in; nothing about engines or peers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ADV_EPS = 1e-4
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER = "default"


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """[groups, G] rewards -> advantages, per group (r - mean) / (std + 1e-4)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + ADV_EPS)


def grpo_token_loss(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    eps_low: float, eps_high: float, num_tokens: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """Clipped surrogate over [B, T] token logprobs; `advantages` [B]; `num_tokens` the normaliser (default: the
    mask's sum; larger when the batch's zero-advantage completions were not evaluated)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    denom = float(num_tokens) if num_tokens is not None else mask.sum().clamp(min=1.0)
    return (loss * mask).sum() / denom


@dataclass
class Sample:
    """One completion to learn from: token ids (completion includes EOS when it ended there) and its advantage."""

    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float


def completion_logprobs(model: Any, samples: list[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, Tc] log-probabilities of each completion token under `model`, and the completion mask."""
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    width = max(len(q) for q in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, q in enumerate(seqs):
        ids[i, : len(q)] = torch.tensor(q)
        attn[i, : len(q)] = 1
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logps = torch.gather(F.log_softmax(logits, dim=-1), 2, ids[:, 1:, None])[..., 0]
    mask = torch.zeros_like(logps)
    for i, s in enumerate(samples):
        start = len(s.prompt_ids) - 1  # logps[t] scores token t + 1
        mask[i, start : start + len(s.completion_ids)] = 1.0
    return logps, mask


class LoraPolicy:
    """A peft LoRA adapter over a float32 copy of the base model, trained with GRPO."""

    def __init__(self, hf_model: Any, cfg: Any, pad_id: int) -> None:
        from peft import LoraConfig, get_peft_model

        self.cfg, self.pad_id = cfg, pad_id
        torch.manual_seed(cfg.seed)  # LoRA A's init: the same on every peer with the same seed
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0)
        self.model = get_peft_model(hf_model.float(), lora)
        self.model.eval()  # no dropout anywhere; gradients still flow
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.0)
        self.version = 0

    def step(self, samples: list[Sample]) -> dict[str, float]:
        """One GRPO step on `samples`; completions with zero advantage add tokens to the normaliser only."""
        num_tokens = sum(len(s.completion_ids) for s in samples)
        useful = [s for s in samples if s.advantage != 0.0 and s.completion_ids]
        stats = {"tokens": float(num_tokens), "sequences": float(len(samples)), "learned": float(len(useful))}
        if not useful or num_tokens == 0:
            stats["loss"] = 0.0
            return stats
        self.optimizer.zero_grad(set_to_none=True)
        logps, mask = completion_logprobs(self.model, useful, self.pad_id)
        adv = torch.tensor([s.advantage for s in useful])
        loss = grpo_token_loss(logps, logps.detach(), adv, mask, self.cfg.eps_low, self.cfg.eps_high, num_tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.version += 1
        stats["loss"] = float(loss.detach())
        return stats

    def deltas(self) -> dict[str, torch.Tensor]:
        """{base parameter name: scale * B @ A}: what merging the adapter adds to each targeted weight."""
        from peft.tuners.lora import LoraLayer

        out = {}
        with torch.no_grad():
            for name, module in self.model.named_modules():
                if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
                    base = name.removeprefix("base_model.model.")
                    out[f"{base}.weight"] = module.get_delta_weight(ADAPTER).detach().float().clone()
        return out

    def save(self, directory: Path, round_index: int) -> None:
        """Adapter, optimiser state and round, written atomically (a rename), so a restart resumes from it."""
        from peft import get_peft_model_state_dict

        directory.mkdir(parents=True, exist_ok=True)
        state = {"adapter": get_peft_model_state_dict(self.model), "optimizer": self.optimizer.state_dict(),
                 "version": self.version, "round": round_index}  # fmt: skip
        tmp = directory / "adapter.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(directory / "adapter.pt")

    def load(self, directory: Path) -> int | None:
        """Resume from `directory`'s checkpoint; the round to run next, or None when there is none."""
        from peft import set_peft_model_state_dict

        path = directory / "adapter.pt"
        if not path.is_file():
            return None
        state = torch.load(path, weights_only=True)
        set_peft_model_state_dict(self.model, state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        return int(state["round"]) + 1


def complete(model: Any, prompts: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int,
             temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:  # fmt: skip
    """Completions of a batch, greedy (temperature 0) or sampled; left-padded, no KV cache: prompts and
    completions here are a few dozen tokens."""
    outs: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            seqs = [p + o for p, o in zip(prompts, outs, strict=True)]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
            attn = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
            pos = (attn.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -1].float()
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
            else:
                nxt = logits.argmax(-1).tolist()
            for i, tok in enumerate(nxt):
                if not done[i]:
                    outs[i].append(tok)
                    done[i] = tok == eos_id
            if all(done):
                break
    return [[t for t in o if t != eos_id] for o in outs]
