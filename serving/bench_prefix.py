"""The prefix cache's effect on TTFT: a shared-prefix workload (one long shared prefix, short distinct suffixes,
as a shared system prompt or few-shot examples make), each request served alone, with the cache on and off.

On and off are the same engine in the same run: "off" forgets every cached prefix before each request, so it
prefills the whole prompt as an engine without the cache would, and on/off alternate request by request so both
see the machine in the same state. This module knows the workload and the ratio; the engine does the caching.
"""

from __future__ import annotations

import random
import statistics

from serving.engine import Engine
from serving.request import GenerateParams

SHARED_PREFIX_TOKENS = 512
SUFFIX_RANGE = (8, 48)
NEW_TOKENS = 4


def shared_prefix_prompts(n: int, seed: int, vocab: int = 256) -> list[list[int]]:
    """`n` prompts: the same `SHARED_PREFIX_TOKENS` tokens, then a suffix of its own each."""
    rng = random.Random(seed)
    prefix = [rng.randrange(vocab) for _ in range(SHARED_PREFIX_TOKENS)]
    return [prefix + [rng.randrange(vocab) for _ in range(rng.randint(*SUFFIX_RANGE))] for _ in range(n)]


def _ttft_s(engine: Engine, prompt: list[int], request_id: str) -> float:
    params = GenerateParams(prompt_token_ids=prompt, max_new_tokens=NEW_TOKENS, request_id=request_id)
    return engine.generate(params).timings["ttft_ms"] / 1000


def prefix_cache_gain(engine: Engine, requests: int, seed: int) -> dict:
    """Median TTFT of the shared-prefix requests without and with the cache, their ratio (the gain) and the
    prompt tokens the cache served."""
    prompts = shared_prefix_prompts(requests + 1, seed)
    engine.reset_prefix_cache()
    _ttft_s(engine, prompts[0], "prefix-warm")  # the first request fills the cache, as any first one would
    cached = {"on": 0, "off": 0}
    on, off = [], []
    for i, prompt in enumerate(prompts[1:]):
        for mode, ttfts in (("on", on), ("off", off)):
            if mode == "off":
                engine.reset_prefix_cache()  # this one prefills whole, and refills the cache for the next
            start = engine.counters()["prompt_tokens_cached"]
            ttfts.append(_ttft_s(engine, prompt, f"prefix-{mode}-{i}"))
            cached[mode] += engine.counters()["prompt_tokens_cached"] - start
    off_s, on_s = statistics.median(off), statistics.median(on)
    return {
        "requests": requests,
        "shared_prefix_tokens": SHARED_PREFIX_TOKENS,
        "suffix_tokens": list(SUFFIX_RANGE),
        "ttft_ms_cache_off": 1000 * off_s,
        "ttft_ms_cache_on": 1000 * on_s,
        "prompt_tokens_cached": cached,
        "prefix_cache_ttft_gain": off_s / on_s,
    }
