"""Paged KV cache: one preallocated pool of fixed-size blocks per layer, and the allocator of its block ids.

The pool is allocated once from a memory budget; requests hold block tables (lists of block ids), so a step
writes new keys/values in place and nothing is reallocated or copied wholesale. The allocator only counts ids:
it knows nothing about tensors, and the tensors know nothing about which request owns a block.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVLayout:
    """Shape of one model's KV cache entries."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def bytes_per_token(self) -> int:
        """Bytes of keys plus values for one token over all layers."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * itemsize


def num_blocks_for_budget(layout: KVLayout, kv_cache_bytes: int, block_size_tokens: int) -> int:
    """How many blocks fit in `kv_cache_bytes` (at least one)."""
    return max(1, kv_cache_bytes // (layout.bytes_per_token() * block_size_tokens))


class BlockAllocator:
    """Free list of block ids. Allocation is all-or-nothing, so a request never holds a partial grant."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._used = [False] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """`n` block ids, or None (and nothing taken) when fewer than `n` are free."""
        if n > len(self._free):
            return None
        blocks = [self._free.popleft() for _ in range(n)]
        for b in blocks:
            self._used[b] = True
        return blocks

    def free(self, blocks: list[int]) -> None:
        """Return blocks to the pool; freeing a block twice is a bug and raises."""
        for b in blocks:
            if not self._used[b]:
                raise RuntimeError(f"block {b} freed twice")
            self._used[b] = False
            self._free.append(b)


class PagedKVCache:
    """The cache tensors: per layer, keys and values of shape [kv_heads, num_blocks, block_size, head_dim].

    Head-major, so that gathering a batch's blocks yields [kv_heads, batch, tokens, head_dim] with contiguous
    (tokens, head_dim) matrices per head: the layout attention reads fastest.
    """

    def __init__(self, layout: KVLayout, num_blocks: int, block_size: int, device: torch.device) -> None:
        self.layout = layout
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (layout.num_kv_heads, num_blocks, block_size, layout.head_dim)
        self.keys = [torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layout.num_layers)]
        self.values = [torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layout.num_layers)]
        self._block_elems = block_size * layout.head_dim
        self._head_offsets = torch.arange(layout.num_kv_heads, device=device)[:, None] * num_blocks
        # Gather workspaces, grown on demand and reused: fresh multi-MB buffers each call cost page faults.
        self._workspace = [torch.empty(0, dtype=layout.dtype, device=device) for _ in range(2)]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store `k`, `v` ([T, kv_heads, head_dim]) at flat slot ids `slots` ([T]) of `layer`, in place."""
        flat = (self.layout.num_kv_heads, self.num_blocks * self.block_size, self.layout.head_dim)
        self.keys[layer].view(flat).index_copy_(1, slots, k.transpose(0, 1))
        self.values[layer].view(flat).index_copy_(1, slots, v.transpose(0, 1))

    def expand_ids(self, block_ids: torch.Tensor) -> torch.Tensor:
        """Row ids of `block_ids` ([..., n]) in every head's part of the pool (compute once per step)."""
        return (self._head_offsets + block_ids.reshape(1, -1)).reshape(-1)

    def gather(self, layer: int, block_ids: torch.Tensor, expanded: torch.Tensor | None = None):
        """Keys and values of the blocks `block_ids` ([..., n]) -> [kv_heads, ..., n*block_size, head_dim].

        The result lives in a reused workspace: it is valid until the next `gather`.
        """
        ids = self.expand_ids(block_ids) if expanded is None else expanded
        rows = ids.shape[0]
        shape = (self.layout.num_kv_heads, *block_ids.shape[:-1], block_ids.shape[-1] * self.block_size, -1)
        out = []
        for i, pool in enumerate((self.keys[layer], self.values[layer])):
            if self._workspace[i].numel() < rows * self._block_elems:
                self._workspace[i] = torch.empty(2 * rows * self._block_elems, dtype=pool.dtype, device=pool.device)
            buf = self._workspace[i][: rows * self._block_elems].view(rows, self._block_elems)
            # index_select on a 2-D view is an order of magnitude faster than fancy indexing.
            torch.index_select(pool.view(-1, self._block_elems), 0, ids, out=buf)
            out.append(buf.view(shape))
        return out[0], out[1]
