"""Checkpoints of a training peer: written atomically, verified by checksum, newest valid one wins.

A checkpoint is a directory `round-NNNNNNNN/` holding `model.safetensors` (the live weights under the model's
own parameter names; with the `config.json` the trainer adds, the directory loads with transformers'
`from_pretrained`), `outer.safetensors` (slow weights and momentum), `inner_optimizer.pt` (AdamW state) and
`meta.json` (round, step, sha256 of each file). It is written in a
temporary directory then renamed. This module knows nothing about peers or networks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from protocols.errors import SwarmError

log = logging.getLogger(__name__)
_FILES = ("model.safetensors", "outer.safetensors", "inner_optimizer.pt")


class CheckpointError(SwarmError):
    """A checkpoint is missing, truncated or does not match its checksums."""


@dataclass
class Checkpoint:
    path: Path
    round_index: int
    step: int
    model: dict[str, torch.Tensor]
    outer: list[torch.Tensor]
    inner_optimizer: dict[str, Any]
    extra: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` on CPU, each in its own storage: safetensors refuses tensors that share one, as tied input and
    output embeddings (small Qwen models) do; a copy of each keeps every name, so the weights load back by name."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def save_checkpoint(
    root: Path,
    *,
    round_index: int,
    step: int,
    model: dict[str, torch.Tensor],
    outer: list[torch.Tensor],
    inner_optimizer: dict[str, Any],
    extra: dict[str, Any] | None = None,
    files: dict[str, bytes] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `round_index` under `root` atomically; keep the newest `keep` ones. `files` are extra
    files written (and checksummed) alongside, e.g. a `config.json` that makes the directory a transformers
    checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{round_index:08d}"
    tmp = root / f".tmp-round-{round_index:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_unshared(model), str(tmp / "model.safetensors"))
    save_file(
        {f"outer.{i}": t.detach().contiguous().cpu() for i, t in enumerate(outer)}, str(tmp / "outer.safetensors")
    )
    torch.save(inner_optimizer, tmp / "inner_optimizer.pt")
    for name, data in (files or {}).items():
        (tmp / Path(name).name).write_bytes(data)
    names = [*_FILES, *(Path(n).name for n in files or {})]
    meta = {
        "round": round_index,
        "step": step,
        "extra": extra or {},
        "sha256": {name: _sha256(tmp / name) for name in names},
    }
    (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
    for name in (*names, "meta.json"):
        with (tmp / name).open("rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in sorted(root.glob("round-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and verify one checkpoint directory; raise `CheckpointError` saying what is wrong."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        sums = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: meta.json is missing or unreadable ({err})") from err
    for name in sorted({*_FILES, *sums}):
        file = path / name
        if not file.exists():
            raise CheckpointError(f"checkpoint {path}: {name} is missing")
        actual = _sha256(file)
        if actual != sums.get(name):
            raise CheckpointError(
                f"checkpoint {path}: {name} is corrupt or truncated "
                f"(sha256 {actual[:12]} != {str(sums.get(name))[:12]})"
            )
    model = load_file(str(path / "model.safetensors"))
    outer_named = load_file(str(path / "outer.safetensors"))
    outer = [outer_named[f"outer.{i}"] for i in range(len(outer_named))]
    inner = torch.load(path / "inner_optimizer.pt", weights_only=True)
    return Checkpoint(path, int(meta["round"]), int(meta["step"]), model, outer, inner, meta.get("extra", {}))


def load_latest(root: Path) -> Checkpoint | None:
    """The newest checkpoint under `root` that verifies; corrupt ones are logged and skipped."""
    if not root.exists():
        return None
    for path in sorted(root.glob("round-*"), reverse=True):
        try:
            return load_checkpoint(path)
        except CheckpointError as err:
            log.warning("refusing checkpoint, falling back to the previous one: %s", err)
    return None
