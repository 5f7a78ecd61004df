"""Paged KV cache: one preallocated pool of fixed-size blocks per layer, and the allocator of its block ids.

The pool is allocated once from a memory budget; requests hold block tables (lists of block ids), so a step
writes new keys/values in place and nothing is reallocated or copied wholesale. The allocator only counts ids:
it knows nothing about tensors, and the tensors know nothing about which request owns a block. Blocks are
reference-counted and full ones can be content-hashed, so requests with a common prefix share its KV.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
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


def chain_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """Content hash of one full block: the hash of everything before it chained with its own token ids.

    A cryptographic digest, so no prompt can be crafted to collide with another caller's cached prefix.
    """
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


class BlockAllocator:
    """Reference-counted block ids. Allocation is all-or-nothing, so a request never holds a partial grant.

    Several requests may hold one block (the n samples of a request share their prompt; prefix caching shares
    identical prefixes). A full block whose content hash was `register`ed keeps that hash after its last holder
    frees it: it waits in the free LRU, where `cached_prefix` can take it back, until `allocate` reuses it.
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # eviction order
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}
        self._by_hash: dict[bytes, int] = {}

    @property
    def num_free(self) -> int:
        """Blocks no request holds (cached ones included: they are evicted on demand)."""
        return len(self._free)

    @property
    def num_cached(self) -> int:
        """Blocks that carry a content hash, held or not."""
        return len(self._hash_of)

    def allocate(self, n: int) -> list[int] | None:
        """`n` block ids, or None (and nothing taken) when fewer than `n` are free. Evicts the oldest cached."""
        if n > len(self._free):
            return None
        blocks = []
        for _ in range(n):
            b, _ = self._free.popitem(last=False)
            digest = self._hash_of.pop(b, None)
            if digest is not None:
                del self._by_hash[digest]
            self._refs[b] = 1
            blocks.append(b)
        return blocks

    def share(self, blocks: list[int]) -> None:
        """One more holder of each of `blocks` (all held already)."""
        for b in blocks:
            if self._refs[b] <= 0:
                raise RuntimeError(f"block {b} shared while free")
            self._refs[b] += 1

    def free(self, blocks: list[int]) -> None:
        """Drop one holder of each block; freeing a block no one holds is a bug and raises.

        The tail goes into the LRU first, so a prefix outlives the blocks that extend it.
        """
        for b in reversed(blocks):
            if self._refs[b] <= 0:
                raise RuntimeError(f"block {b} freed twice")
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._free[b] = None

    def register(self, block: int, digest: bytes) -> None:
        """Mark a held, fully computed block as holding the content `digest` (first block with a digest wins)."""
        if digest not in self._by_hash and block not in self._hash_of:
            self._by_hash[digest] = block
            self._hash_of[block] = digest

    def forget_hashes(self) -> None:
        """Empty the prefix cache: no block is found by its content any more (held blocks stay held)."""
        self._hash_of.clear()
        self._by_hash.clear()

    def cached_prefix(self, digests: list[bytes]) -> list[int]:
        """The blocks of the longest cached run of `digests` from the start; each gains a holder."""
        blocks = []
        for digest in digests:
            b = self._by_hash.get(digest)
            if b is None:
                break
            blocks.append(b)
        for b in blocks:
            if self._refs[b] == 0:
                del self._free[b]
            self._refs[b] += 1
        return blocks


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

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy block `src` onto block `dst` for each (src, dst), in every layer (copy-on-write of shared KV)."""
        if not pairs:
            return
        src = torch.tensor([p[0] for p in pairs], device=self.keys[0].device)
        dst = torch.tensor([p[1] for p in pairs], device=self.keys[0].device)
        for pool in (*self.keys, *self.values):
            pool.index_copy_(1, dst, pool.index_select(1, src))
