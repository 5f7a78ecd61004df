"""Inner loop: accelerate-prepared model and AdamW with linear warm-up, cosine decay and grad clipping.

bf16 autocast is used when a CUDA device is present or `precision` asks for it (fast on CPUs with AMX), fp32
otherwise; weights and optimizer state stay fp32. `step` is one optimizer step on one batch;
`backward` + `apply` split it for a data-parallel baseline that all-reduces gradients in between. This module
knows nothing about peers or outer optimizers.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator

from serving.model import resolve_device
from training.config import TrainingConfig


@functools.lru_cache(maxsize=1)
def cpu_bf16_speedup(size: int = 256) -> float:
    """How many times faster this CPU multiplies bf16 matrices than fp32 ones (best of 2 runs each, after a warm-up):
    above 1 where bf16 is native (AVX-512 BF16, AMX), far below it where it is emulated (AVX2: 100x slower)."""

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y
        times = []
        for _ in range(2):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, 4 * size, generator=gen)
    return best(a, b) / max(1e-9, best(a.bfloat16(), b.bfloat16()))


def fastest_cpu_precision() -> str:
    """`bf16` where this CPU runs bf16 matrix products clearly faster than fp32 (1.2x), else `fp32`."""
    return "bf16" if cpu_bf16_speedup() > 1.2 else "fp32"


def lr_factor(step: int, cfg: TrainingConfig) -> float:
    """Multiplier of `inner_lr` at optimizer step `step` (0-based): warm-up, then cosine to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class InnerLoop:
    """Owns the accelerator, the (prepared) model, AdamW and the schedule. `ignored_label` (PAD) is never a
    target."""

    def __init__(self, model: torch.nn.Module, cfg: TrainingConfig, ignored_label: int | None = None) -> None:
        self.cfg = cfg
        self.ignored_label = ignored_label
        self.device = resolve_device(cfg.device)
        use_cuda = self.device.type == "cuda"
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
        # The model goes to `self.device` here, the index included (accelerate would take the current device).
        self.accelerator = Accelerator(
            cpu=not use_cuda, mixed_precision="bf16" if bf16 and use_cuda else "no", device_placement=False
        )
        model = model.to(self.device)
        # On CPU, torch's autocast directly: accelerate's precision is one per process, and tests mix them.
        self.cpu_bf16 = bf16 and not use_cuda
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.inner_lr, weight_decay=cfg.inner_weight_decay, betas=(0.9, 0.95)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.steps_done = 0

    def set_step(self, step: int) -> None:
        """Continue the schedule from optimizer step `step` (a late joiner takes the group's step). accelerate
        wraps the scheduler: its `last_epoch` must be set on the wrapped LambdaLR, which computes the next rates
        from it, with the current rate set to match."""
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)
        scheduler.last_epoch = step
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", self.cfg.inner_lr)
            group["lr"] = group["initial_lr"] * lr_factor(step, self.cfg)
        scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.steps_done = step

    def _autocast(self) -> Any:
        if self.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return self.accelerator.autocast()

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())

    def _labels(self, batch: torch.Tensor) -> torch.Tensor:
        return batch if self.ignored_label is None else batch.masked_fill(batch == self.ignored_label, -100)

    def backward(self, batch: torch.Tensor, scale: float = 1.0) -> float:
        """Forward and backward on `batch` (ids, shape [B, T]); returns the loss; gradients (of the loss x `scale`)
        add up in .grad."""
        self.model.train()
        batch = batch.to(self.device)
        with self._autocast():
            loss = self.model(input_ids=batch, labels=self._labels(batch)).loss
        self.accelerator.backward(loss * scale if scale != 1.0 else loss)
        return float(loss.detach())

    def step_in_micro_batches(
        self, batch: torch.Tensor, micro_batch: int, run: Callable[[Callable[[], None]], None]
    ) -> float:
        """One optimizer step on `batch`, its gradient accumulated over micro-batches of `micro_batch` rows; `run`
        executes each micro-step (a co-scheduler runs it when the device has room). Same gradient as `step`, up to
        summation order."""
        total = 0.0

        def micro(part: torch.Tensor) -> Callable[[], None]:
            def one() -> None:
                nonlocal total
                total += self.backward(part, scale=len(part) / len(batch)) * len(part) / len(batch)

            return one

        for part in batch.split(micro_batch):
            run(micro(part))
        self.apply()
        return total

    def apply(self) -> None:
        """Clip, step AdamW and the schedule, zero the gradients."""
        self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1

    def step(self, batch: torch.Tensor) -> float:
        loss = self.backward(batch)
        self.apply()
        return loss

    @torch.no_grad()
    def evaluate(self, batches: list[torch.Tensor]) -> float:
        """Mean loss over fixed eval batches."""
        self.model.eval()
        total = 0.0
        for batch in batches:
            batch = batch.to(self.device)
            with self._autocast():
                total += float(self.model(input_ids=batch, labels=self._labels(batch)).loss)
        return total / len(batches)
