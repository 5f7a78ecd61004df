"""Training text: the running interpreter's stdlib source (default) or files given by path, as token ids.

Each document (a file; in a .jsonl file each record: its "text", or its "prompt" then its "completion") is
encoded as serving encodes a prompt (with the BOS the tokenizer adds, if any) and ended with EOS, so a trained
model learns where documents end and can stop. A fixed tail of the corpus is held out for eval; the rest is cut
into contiguous shards, one per peer (chosen by rank, or derived from the peer id). Batches are random windows
of a shard from a seeded generator. This module knows nothing about models or peers beyond a tokenizer and a
shard index.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _record_text(record: Any) -> str:
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        return record["text"]
    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return record["prompt"] + record["completion"]
    return json.dumps(record)


def _documents(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix != ".jsonl":
        yield text
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield _record_text(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{lineno} is not a JSON record ({err})") from None


def _files(data_path: Path | None) -> list[Path]:
    if data_path is None:
        return _stdlib_files()
    if Path(data_path).is_dir():
        return sorted(p for p in Path(data_path).rglob("*") if p.suffix in {".txt", ".jsonl", ".md", ".py"})
    return [Path(data_path)]


def load_corpus(data_path: Path | None, max_bytes: int, tokenizer: Any = None) -> torch.Tensor:
    """Token ids of the corpus's documents (at most `max_bytes` of text, in a deterministic file order), each
    ended by EOS; `tokenizer` defaults to the embedded byte tokenizer."""
    if tokenizer is None:
        from serving.model import build_byte_tokenizer

        tokenizer = build_byte_tokenizer()
    files = _files(data_path)
    if not files:
        raise FileNotFoundError(f"no text files under {data_path}")
    docs: list[str] = []
    whole = 0  # documents kept whole (a cut last one gets no EOS: it did not end there)
    total = 0
    for doc in itertools.chain.from_iterable(_documents(p) for p in files):
        data = doc.encode("utf-8")
        kept = data[: max_bytes - total]
        docs.append(kept.decode("utf-8", errors="ignore"))
        whole += len(kept) == len(data)
        total += len(kept)
        if total >= max_bytes:
            break
    eos = tokenizer.eos_token_id
    encoded = tokenizer(docs, add_special_tokens=True, verbose=False)["input_ids"]
    for i in range(whole):
        if eos is not None and (not encoded[i] or encoded[i][-1] != eos):
            encoded[i] = [*encoded[i], eos]
    count = sum(len(ids) for ids in encoded)
    return torch.from_numpy(np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int64, count=count))


def shard_for_peer(peer_id: str, num_shards: int) -> int:
    """A shard index derived from the peer id (stable across restarts)."""
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:8], "big") % num_shards


class TokenData:
    """Train shards and a held-out eval split of one corpus."""

    def __init__(self, tokens: torch.Tensor, eval_fraction: float, seq_len: int) -> None:
        n_eval = max(seq_len + 1, int(len(tokens) * eval_fraction))
        if len(tokens) < n_eval + 2 * (seq_len + 1):
            raise ValueError(f"corpus of {len(tokens)} tokens is too small for seq_len={seq_len}")
        self.train = tokens[:-n_eval]
        self.eval = tokens[-n_eval:]
        self.seq_len = seq_len

    def shard(self, index: int, num_shards: int) -> torch.Tensor:
        size = len(self.train) // num_shards
        if size < self.seq_len + 1:
            raise ValueError(f"{num_shards} shards of {len(self.train)} tokens are too small")
        return self.train[index * size : (index + 1) * size]

    def batch(self, shard: torch.Tensor, batch_size: int, seed: int, step: int) -> torch.Tensor:
        """Random windows (batch_size x seq_len) of `shard` for inner step `step`: a pure function of
        (seed, step), so a resumed peer sees exactly the batches it would have seen."""
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(shard) - self.seq_len, (batch_size,), generator=gen)
        return torch.stack([shard[s : s + self.seq_len] for s in starts.tolist()])

    def eval_batches(self, batch_size: int, num_batches: int) -> list[torch.Tensor]:
        """Fixed, evenly spaced eval windows: every peer and system scores the same tokens."""
        n = batch_size * num_batches
        hi = len(self.eval) - self.seq_len
        starts = torch.linspace(0, hi, n).long().tolist()
        windows = torch.stack([self.eval[s : s + self.seq_len] for s in starts])
        return list(windows.split(batch_size))
