"""Serving an adapted policy: writes base + delta into the runner's (stacked) weights, from a kept base copy.

Deltas are keyed by the Hugging Face parameter names of the linear layers (`model.layers.3.self_attn.q_proj.weight`),
as a LoRA adapter's merge produces them. Every swap rebuilds each touched tensor from the base copy in float32, so
rounding never accumulates (no repeated in-place merge/unmerge). Knows the runner's weight layout; nothing about
adapters, optimisers or why the weights change.
"""

from __future__ import annotations

import re

import torch

from serving.errors import EngineError

_NAME = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")


class WeightSwap:
    """Holds the base copy of the runner's four per-layer matrices and rewrites them on `apply`."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.base = [
            {"qkv": w.qkv.detach().clone(), "o": w.o.detach().clone(), "gate_up": w.gate_up.detach().clone(),
             "down": w.down.detach().clone()}
            for w in runner.layers
        ]  # fmt: skip
        layout = runner.layout
        self.q_dim = runner.num_heads * layout.head_dim
        self.kv_dim = layout.num_kv_heads * layout.head_dim
        self.inter = runner.intermediate

    def _rows(self, proj: str) -> tuple[str, slice]:
        """Which stacked tensor a projection lives in, and its rows there."""
        q, kv, inter = self.q_dim, self.kv_dim, self.inter
        return {
            "q": ("qkv", slice(0, q)), "k": ("qkv", slice(q, q + kv)), "v": ("qkv", slice(q + kv, q + 2 * kv)),
            "o": ("o", slice(None)), "gate": ("gate_up", slice(0, inter)), "up": ("gate_up", slice(inter, 2 * inter)),
            "down": ("down", slice(None)),
        }[proj]  # fmt: skip

    def apply(self, deltas: dict[str, torch.Tensor]) -> None:
        """Make the runner's weights base + deltas (an empty dict restores the base). Call between steps."""
        plan: list[dict[str, torch.Tensor]] = [{} for _ in self.base]
        for name, delta in deltas.items():
            match = _NAME.match(name)
            if match is None or int(match[1]) >= len(self.base):
                raise EngineError(f"no servable linear weight named {name!r}")
            layer, proj = int(match[1]), match[3]
            key, rows = self._rows(proj)
            full = plan[layer].setdefault(key, self.base[layer][key].float().clone())
            if full[rows].shape != delta.shape:
                raise EngineError(f"{name}: delta shape {tuple(delta.shape)} != weight {tuple(full[rows].shape)}")
            full[rows] += delta.to(full.device, torch.float32)
        with torch.no_grad():
            for layer, (weights, base) in enumerate(zip(self.runner.layers, self.base, strict=True)):
                for key, tensor in base.items():
                    target = getattr(weights, key)
                    new = plan[layer].get(key)
                    target.copy_(tensor if new is None else new.to(tensor.dtype))
