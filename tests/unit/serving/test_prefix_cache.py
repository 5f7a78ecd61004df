"""Prefix caching: greedy outputs identical with it on and off for mixed batches, prompt tokens served from the
cache counted, and the block allocator's reference counts, content hashes and LRU eviction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serving.engine import Engine
from serving.kv_cache import BlockAllocator, chain_hash
from serving.model import load_model
from serving.request import GenerateParams
from serving.runner import kv_layout_of
from tests.unit.serving.helpers import run_all, tiny_config

SHARED = list(range(40, 40 + 70))  # 70 tokens: four full blocks of 16 shared, and a partly filled fifth


def mixed_batch(tag: str) -> list[GenerateParams]:
    """Shared-prefix prompts with distinct suffixes, an exact repeat, a prompt that is the prefix itself, and
    unrelated prompts of several lengths; greedy, some with n > 1, one with penalties."""
    gen = torch.Generator().manual_seed(11)
    suffixes = [torch.randint(0, 250, (k,), generator=gen).tolist() for k in (3, 9, 16, 21)]
    prompts = [SHARED + s for s in suffixes] + [SHARED + suffixes[0], SHARED[:64], SHARED[:17]]
    prompts += [torch.randint(0, 250, (k,), generator=gen).tolist() for k in (5, 33, 48)]
    params = []
    for i, p in enumerate(prompts):
        extra: dict[str, object] = {"n": 2} if i in (1, 7) else {}
        if i == 3:
            extra["repetition_penalty"] = 1.3
        params.append(GenerateParams(prompt_token_ids=p, max_new_tokens=20, request_id=f"{tag}{i}", **extra))
    return params


@pytest.mark.parametrize("chunked", [True, False])
def test_greedy_outputs_are_identical_with_prefix_caching_on_and_off(tmp_path: Path, chunked: bool) -> None:
    outputs = {}
    counters = {}
    for caching in (False, True):
        config = tiny_config(tmp_path, prefix_caching=caching, chunked_prefill=chunked, max_batch_tokens=64)
        with Engine(config) as engine:
            warm = engine.generate(GenerateParams(prompt_token_ids=SHARED, max_new_tokens=4), timeout_s=60)
            assert warm.finish_reason in ("stop", "length")
            first = run_all(engine, mixed_batch("a"))
            second = run_all(engine, mixed_batch("b"))  # the same batch again: now mostly cached
            counters[caching] = engine.counters()
            blocks = engine.scheduler.allocator
            assert blocks.num_free == blocks.num_blocks
        outputs[caching] = (first, second)
    off, on = outputs[False], outputs[True]
    for run_off, run_on in ((off[0], on[0]), (off[1], on[1])):
        assert len(run_on.choices) == 12  # ten requests, two of them with two samples
        assert run_on.choices == run_off.choices
    assert {(rid[1:], i): t for (rid, i), t in on[1].choices.items()} == {
        (rid[1:], i): t for (rid, i), t in off[0].choices.items()
    }
    assert on[0].choices[("a1", 0)] == on[0].choices[("a1", 1)]
    assert counters[False]["prompt_tokens_cached"] == 0
    total_prompt = sum(len(p.prompt_token_ids) for p in mixed_batch("x"))
    # The second batch finds at least the shared prefix's four full blocks for its eight prompts on SHARED.
    assert counters[True]["prompt_tokens_cached"] >= 8 * 64
    assert (
        counters[True]["prompt_tokens_prefilled"] + counters[True]["prompt_tokens_cached"]
        >= (counters[False]["prompt_tokens_prefilled"])
    )
    assert counters[True]["prompt_tokens_prefilled"] < counters[False]["prompt_tokens_prefilled"] - total_prompt // 2


def test_a_repeated_prompt_is_served_from_the_cache(tiny_engine: Engine) -> None:
    prompt = list(range(1, 1 + 50))  # three full blocks and two tokens
    first = tiny_engine.generate(GenerateParams(prompt_token_ids=prompt, max_new_tokens=10), timeout_s=60)
    before = tiny_engine.counters()
    again = tiny_engine.generate(GenerateParams(prompt_token_ids=prompt, max_new_tokens=10), timeout_s=60)
    after = tiny_engine.counters()
    assert again.token_ids == first.token_ids
    assert after["prompt_tokens_cached"] - before["prompt_tokens_cached"] == 48
    assert after["prompt_tokens_prefilled"] - before["prompt_tokens_prefilled"] == 2


def test_reset_forgets_every_cached_prefix(tiny_engine: Engine) -> None:
    prompt = list(range(1, 1 + 50))
    first = tiny_engine.generate(GenerateParams(prompt_token_ids=prompt, max_new_tokens=10), timeout_s=60)
    tiny_engine.reset_prefix_cache()
    assert tiny_engine.counters()["cached_blocks"] == 0
    again = tiny_engine.generate(GenerateParams(prompt_token_ids=prompt, max_new_tokens=10), timeout_s=60)
    assert again.token_ids == first.token_ids
    assert tiny_engine.counters()["prompt_tokens_cached"] == 0
    assert tiny_engine.counters()["prompt_tokens_prefilled"] == 2 * len(prompt)


def test_cached_blocks_are_evicted_when_the_pool_needs_them(tmp_path: Path) -> None:
    per_token = kv_layout_of(load_model("tiny").hf_model.config, torch.float32).bytes_per_token()
    with Engine(tiny_config(tmp_path, kv_cache_bytes=20 * 16 * per_token)) as engine:
        blocks = engine.scheduler.allocator
        assert blocks.num_blocks == 20
        first = engine.generate(GenerateParams(prompt_token_ids=SHARED, max_new_tokens=10), timeout_s=60)
        assert blocks.num_cached == 4
        # A long prompt of other tokens needs every block: the cached ones are evicted, not refused.
        other = [(7 * i) % 250 for i in range(300)]
        engine.generate(GenerateParams(prompt_token_ids=other, max_new_tokens=4), timeout_s=60)
        again = engine.generate(GenerateParams(prompt_token_ids=SHARED, max_new_tokens=10), timeout_s=60)
        assert again.token_ids == first.token_ids
        assert blocks.num_free == 20


def test_allocator_counts_holders_and_keeps_freed_hashed_blocks_in_an_lru() -> None:
    pool = BlockAllocator(4)
    a = pool.allocate(2)
    assert a == [0, 1] and pool.num_free == 2
    h0 = chain_hash(b"", [1, 2])
    h1 = chain_hash(h0, [3, 4])
    assert h1 != chain_hash(chain_hash(b"", [9, 9]), [3, 4])  # a block's hash depends on everything before it
    pool.register(a[0], h0)
    pool.register(a[1], h1)
    pool.share(a)
    pool.free(a)
    assert pool.num_free == 2  # still held once
    pool.free(a)
    assert pool.num_free == 4 and pool.num_cached == 2
    assert pool.cached_prefix([h0, h1, chain_hash(h1, [5, 6])]) == [0, 1]
    assert pool.num_free == 2
    pool.free([0, 1])
    # Freed tail first: block 1 (the extension) is evicted before block 0 (the prefix); uncached blocks first.
    assert pool.allocate(2) == [2, 3]
    assert pool.allocate(1) == [1]
    assert pool.cached_prefix([h0, h1]) == [0]
    assert pool.num_cached == 1
    with pytest.raises(RuntimeError):
        pool.free([2, 2])
