"""Training text: the running interpreter's stdlib source (default) or files given by path, as byte ids.

A fixed tail of the corpus is held out for eval; the rest is cut into contiguous shards, one per peer (chosen
by rank, or derived from the peer id). Batches are random windows of a shard from a seeded generator. This
module knows nothing about models or peers beyond a shard index.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import torch

from training.model import encode_text


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts))


def _read_text_file(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix != ".jsonl":
        return text
    parts = []
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            parts.append(record["text"] if isinstance(record, dict) and "text" in record else json.dumps(record))
    return "\n".join(parts)


def load_corpus(data_path: Path | None, max_bytes: int) -> torch.Tensor:
    """Byte ids of the corpus, at most `max_bytes` of them, in a deterministic file order."""
    if data_path is None:
        files = _stdlib_files()
    elif Path(data_path).is_dir():
        files = sorted(p for p in Path(data_path).rglob("*") if p.suffix in {".txt", ".jsonl", ".md", ".py"})
    else:
        files = [Path(data_path)]
    if not files:
        raise FileNotFoundError(f"no text files under {data_path}")
    chunks: list[bytes] = []
    total = 0
    for path in files:
        data = _read_text_file(path).encode("utf-8")
        chunks.append(data[: max_bytes - total])
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    return encode_text(b"".join(chunks)).to(torch.int64)


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
