"""Which dtype to serve in on this device: the fastest candidate whose greedy output equals float32's on a probe.

Whether bfloat16 beats float32 depends on the processor, not on its name: with AMX or AVX512-BF16 a bf16 matmul
is several times faster than fp32, without them it is many times slower, and half precision on CPU is usually
emulated. So each candidate is timed on what the engine computes (a prefill chunk and a batch of decode rows, the
model's own forward), and kept only if a greedy continuation of a fixed probe prompt matches float32's token for
token. A busy machine only adds time, so each candidate's figure is its fastest forward over two passes through
all candidates: a burst of other work during one candidate's turn does not make it lose (a choice measured that
way once cached fp16, several times slower here, for good). The choice is cached beside the latency profile, keyed
by model hash, device, threads and torch version.
This module knows dtypes, timing and greedy decoding; nothing about KV caches or scheduling.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PROBE_PROMPT_TOKENS = 64
PROBE_NEW_TOKENS = 16
PREFILL_TOKENS = 256
DECODE_ROWS = 32
REPEATS = 3
PASSES = 2  # through every candidate, so that a burst of load during one candidate's turn is outvoted


@dataclass
class DtypeChoice:
    """The chosen dtype and what each candidate measured (seconds per probe step, greedy equal to fp32's)."""

    dtype: str
    key: str = ""
    step_s: dict[str, float] = field(default_factory=dict)
    greedy_equal: dict[str, bool] = field(default_factory=dict)


def candidates() -> list[torch.dtype]:
    """float32 first (the reference), then the 16-bit types; one a device cannot compute in is skipped."""
    return [torch.float32, torch.bfloat16, torch.float16]


def _timed_forward(model: torch.nn.Module, ids: torch.Tensor, device: torch.device) -> float:
    with torch.inference_mode():
        model(ids)  # warm-up: kernels picked, workspaces allocated
        times = []
        for _ in range(REPEATS):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(ids)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return min(times)


def step_seconds(model: torch.nn.Module, vocab: int, device: torch.device) -> float:
    """One prefill chunk plus one decode-shaped forward (many rows of one token): the matmul shapes of a step."""
    gen = torch.Generator().manual_seed(0)
    prefill = torch.randint(0, vocab, (1, PREFILL_TOKENS), generator=gen).to(device)
    decode = torch.randint(0, vocab, (DECODE_ROWS, 1), generator=gen).to(device)
    return _timed_forward(model, prefill, device) + _timed_forward(model, decode, device)


def greedy_tokens(model: torch.nn.Module, vocab: int, device: torch.device) -> list[int]:
    """Greedy continuation of a fixed probe prompt, without EOS (every token counts)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (1, PROBE_PROMPT_TOKENS), generator=gen).to(device)
    with torch.inference_mode():
        out = model.generate(
            ids, max_new_tokens=PROBE_NEW_TOKENS, min_new_tokens=PROBE_NEW_TOKENS, do_sample=False, pad_token_id=0
        )
    return out[0, PROBE_PROMPT_TOKENS:].tolist()


def choose(hf_model: torch.nn.Module, device: torch.device, key: str = "") -> DtypeChoice:
    """Measure every candidate on `device` and pick the fastest whose greedy probe equals float32's. The model is
    copied per candidate; `hf_model` itself is left as it was."""
    import copy

    vocab = int(hf_model.config.vocab_size)
    choice = DtypeChoice(dtype="float32", key=key)
    reference: list[int] | None = None
    usable = candidates()
    for first_pass in [True] + [False] * (PASSES - 1):
        for dtype in list(usable):
            name = str(dtype).removeprefix("torch.")
            try:
                model = copy.deepcopy(hf_model).to(device=device, dtype=dtype).eval()
                if first_pass:
                    tokens = greedy_tokens(model, vocab, device)
                seconds = step_seconds(model, vocab, device)
            except (RuntimeError, NotImplementedError) as err:  # a dtype this device cannot compute in
                log.info("dtype %s unavailable on %s: %s", name, device, err)
                usable.remove(dtype)
                continue
            choice.step_s[name] = min(seconds, choice.step_s.get(name, math.inf))
            if first_pass:
                reference = tokens if reference is None else reference
                choice.greedy_equal[name] = tokens == reference
    eligible = [n for n, equal in choice.greedy_equal.items() if equal]
    choice.dtype = min(eligible, key=lambda n: choice.step_s[n])
    log.info("serving dtype %s (step seconds %s, greedy equal to float32 %s)", choice.dtype, choice.step_s,
             choice.greedy_equal)  # fmt: skip
    return choice


def load_cached(path: Path, key: str) -> DtypeChoice | None:
    try:
        data = json.loads(path.read_text())
        choice = DtypeChoice(**data)
    except (OSError, ValueError, TypeError):
        return None
    if choice.key != key or choice.dtype not in choice.step_s:
        return None
    return choice


def save_cached(path: Path, choice: DtypeChoice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")  # nodes started together profile the same model
    tmp.write_text(json.dumps(asdict(choice)))
    tmp.replace(path)
