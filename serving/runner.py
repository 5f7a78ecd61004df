"""Runs a scheduler plan: one forward over all scheduled tokens, flattened, against the paged KV cache.

Linear layers see every token of every request at once ([T, hidden], no padding to the longest sequence);
attention runs per prefill chunk, and once for all decodes together against their gathered KV blocks. The
forward is written over the weights of a Hugging Face Llama-family model (Llama, Mistral, Qwen2's qkv bias,
Qwen3's q/k norm; RoPE tables come from the model's own rotary module, so its rope settings hold). The runner
never decides who runs: it executes the plan it is given and returns one sampled token per sampling chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from serving.kv_cache import KVLayout, PagedKVCache
from serving.model import LoadedModel
from serving.plan import SamplingSpec, ScheduledChunk, SchedulerOutput
from serving.request import TokenLogprob
from serving.sampling import make_generator, sample_rows, token_logprobs


@dataclass
class LayerWeights:
    ln_in: torch.Tensor
    qkv: torch.Tensor  # q, k and v projections stacked: one matmul
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    ln_post: torch.Tensor
    gate_up: torch.Tensor  # gate and up projections stacked
    down: torch.Tensor


def model_max_context(hf_config) -> int:
    """Longest sequence the model attends over; Mistral's sliding window caps it (no sliding attention here)."""
    limit = int(hf_config.max_position_embeddings)
    window = getattr(hf_config, "sliding_window", None)
    if hf_config.model_type == "mistral" and window:
        limit = min(limit, int(window))
    return limit


def kv_layout_of(hf_config, dtype: torch.dtype) -> KVLayout:
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    return KVLayout(hf_config.num_hidden_layers, kv_heads, head_dim, dtype)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Same arithmetic as the HF Llama RMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


MAX_DECODE_GROUPS = 3
MIN_GROUP_SAVING = 0.2  # split a decode group only when that saves this share of its padded KV reads


@dataclass
class _DecodeGroup:
    """Decodes attending together: rows `start`..`end` of the step, their blocks padded to the group's widest."""

    start: int
    end: int
    blocks: torch.Tensor  # [B, width] block ids
    ids: torch.Tensor  # blocks expanded over kv heads (see PagedKVCache.expand_ids)
    bias: torch.Tensor  # [1, B, 1, S]: 0 where a decode attends, -inf past its length


def split_by_width(widths: list[int], groups: int = MAX_DECODE_GROUPS) -> list[tuple[int, int]]:
    """Cut ascending `widths` into at most `groups` contiguous runs, each padded to its last width, where a cut
    saves at least `MIN_GROUP_SAVING` of the padded area: short and long contexts stop reading each other's
    padding. Greedy best cut of the widest run, repeated; O(n) per cut."""
    runs = [(0, len(widths))] if widths else []
    while len(runs) < groups:
        best = None
        for r, (lo, hi) in enumerate(runs):
            area = (hi - lo) * widths[hi - 1]
            for cut in range(lo + 1, hi):
                saving = (cut - lo) * (widths[hi - 1] - widths[cut - 1])
                if saving >= MIN_GROUP_SAVING * area and (best is None or saving > best[0]):
                    best = (saving, r, cut)
        if best is None:
            break
        _, r, cut = best
        lo, hi = runs[r]
        runs[r : r + 1] = [(lo, cut), (cut, hi)]
    return runs


@dataclass
class _StepLayout:
    """Index tensors of one step, built once and shared by every layer."""

    slots: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    decode_groups: list[_DecodeGroup]
    prefills: list[tuple[int, int, int, torch.Tensor | None, torch.Tensor | None]]  # row0, n, start, blocks, mask
    sample_rows: torch.Tensor


class ModelRunner:
    """Owns the weights on the device and the KV cache tensors; executes `SchedulerOutput`s."""

    def __init__(self, loaded: LoadedModel, device: torch.device, dtype: torch.dtype, num_blocks: int, block_size: int):
        cfg = loaded.hf_model.config
        self.device, self.dtype, self.block_size = device, dtype, block_size
        self.layout = kv_layout_of(cfg, dtype)
        self.num_heads = cfg.num_attention_heads
        self.eps = float(cfg.rms_norm_eps)
        self.act = ACT2FN[cfg.hidden_act]
        self.max_context = model_max_context(cfg)
        self.vocab_size = cfg.vocab_size
        model = loaded.hf_model.to(device=device, dtype=dtype)
        self.embed = model.model.embed_tokens.weight.detach()
        self.final_norm = model.model.norm.weight.detach()
        self.lm_head = model.lm_head.weight.detach()
        self.layers = [self._layer_weights(layer) for layer in model.model.layers]
        self.intermediate = self.layers[0].gate_up.shape[0] // 2
        positions = torch.arange(self.max_context, device=device)[None]
        dummy = torch.zeros(1, dtype=dtype, device=device)
        with torch.no_grad():
            cos, sin = model.model.rotary_emb(dummy, positions)
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)
        self.kv = PagedKVCache(self.layout, num_blocks, block_size, device)
        self._generators: dict[str, torch.Generator] = {}
        self.last_logprobs: dict[str, TokenLogprob] = {}

    @staticmethod
    def _layer_weights(layer) -> LayerWeights:
        att, mlp = layer.self_attn, layer.mlp
        projs = (att.q_proj, att.k_proj, att.v_proj)
        biases = [p.bias for p in projs]
        qkv_bias = torch.cat([b.detach() for b in biases]) if all(b is not None for b in biases) else None
        q_norm = getattr(att, "q_norm", None)
        k_norm = getattr(att, "k_norm", None)
        return LayerWeights(
            ln_in=layer.input_layernorm.weight.detach(),
            qkv=torch.cat([p.weight.detach() for p in projs]).contiguous(),
            qkv_bias=qkv_bias,
            q_norm=q_norm.weight.detach() if q_norm is not None else None,
            k_norm=k_norm.weight.detach() if k_norm is not None else None,
            o=att.o_proj.weight.detach(),
            o_bias=att.o_proj.bias.detach() if att.o_proj.bias is not None else None,
            ln_post=layer.post_attention_layernorm.weight.detach(),
            gate_up=torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()]).contiguous(),
            down=mlp.down_proj.weight.detach(),
        )

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput) -> dict[str, int]:
        """Run the plan; returns {request_id: sampled token} for every chunk with `sample` (and its forks).

        Log-probabilities of what was sampled, for the requests that asked, are left in `last_logprobs`.
        """
        for rid in output.released_request_ids:
            self._generators.pop(rid, None)
        self.kv.copy_blocks(output.block_copies)  # before this step writes into the blocks copied
        self.last_logprobs = {}
        if output.is_empty:
            return {}
        # Decodes first, shortest context first: decodes attend in a few groups of similar length.
        chunks = sorted(output.chunks, key=lambda c: (not c.is_decode, c.start_pos if c.is_decode else 0))
        tokens = torch.tensor([t for c in chunks for t in c.token_ids], dtype=torch.long, device=self.device)
        step = self._step_layout(chunks)
        hidden = self._forward(tokens, step)
        sampling = [c for c in chunks if c.sample]
        if not sampling:
            return {}
        last = _rms_norm(hidden[step.sample_rows], self.final_norm, self.eps)
        logits = F.linear(last, self.lm_head)
        # One row per sampled id: a chunk's forks draw from its row too, each with its own generator.
        rows = [(i, c.request_id, c.sampling, c.history) for i, c in enumerate(sampling)]
        rows += [(i, rid, spec, c.history) for i, c in enumerate(sampling) for rid, spec in c.forks]
        if len(rows) > len(sampling):
            logits = logits[torch.tensor([r[0] for r in rows], device=self.device)]
        specs = [r[2] for r in rows]
        gens = [None if spec.greedy else self._generator(rid, spec) for _, rid, spec, _ in rows]
        picked = sample_rows(logits, specs, gens, [r[3] for r in rows])
        wanted = [j for j, spec in enumerate(specs) if spec.logprobs is not None]
        if wanted:
            index = torch.tensor(wanted, device=self.device)
            found = token_logprobs(logits[index], [picked[j] for j in wanted], [specs[j].logprobs for j in wanted])
            for j, (lp, top) in zip(wanted, found, strict=True):
                self.last_logprobs[rows[j][1]] = TokenLogprob(picked[j], lp, top)
        return {rid: tok for (_, rid, _, _), tok in zip(rows, picked, strict=True)}

    def _generator(self, request_id: str, spec: SamplingSpec) -> torch.Generator:
        gen = self._generators.get(request_id)
        if gen is None:
            gen = self._generators[request_id] = make_generator(spec, self.device)
        return gen

    def _step_layout(self, chunks: list[ScheduledChunk]) -> _StepLayout:
        bs, dev = self.block_size, self.device
        positions, slots, sample_rows = [], [], []
        row = 0
        for c in chunks:
            n = len(c.token_ids)
            pos = range(c.start_pos, c.start_pos + n)
            positions.extend(pos)
            slots.extend(c.block_table[p // bs] * bs + p % bs for p in pos)
            row += n
            if c.sample:
                sample_rows.append(row - 1)
        decodes = [c for c in chunks if c.is_decode]
        table = [c.block_table[: (c.start_pos + bs) // bs] for c in decodes]
        groups = []
        for start, end in split_by_width([len(t) for t in table]):
            width = len(table[end - 1])
            blocks = torch.tensor([t + [0] * (width - len(t)) for t in table[start:end]], device=dev)
            lengths = torch.tensor([c.start_pos + 1 for c in decodes[start:end]], device=dev)
            past = torch.arange(width * bs, device=dev)[None] >= lengths[:, None]
            bias = torch.zeros(past.shape, dtype=torch.float32, device=dev).masked_fill_(past, float("-inf"))
            groups.append(_DecodeGroup(start, end, blocks, self.kv.expand_ids(blocks), bias[None, :, None, :]))
        prefills = []
        row = len(decodes)
        for c in chunks[len(decodes) :]:
            n, start = len(c.token_ids), c.start_pos
            blocks = mask = None
            if start > 0:
                end = start + n
                blocks = torch.tensor(c.block_table[: (end + bs - 1) // bs], device=dev)
                key_pos = torch.arange(end, device=dev)
                mask = key_pos[None] <= (start + torch.arange(n, device=dev))[:, None]
            prefills.append((row, n, start, blocks, mask))
            row += n
        pos_t = torch.tensor(positions, device=dev)
        return _StepLayout(
            slots=torch.tensor(slots, device=dev),
            cos=self.cos[pos_t],
            sin=self.sin[pos_t],
            decode_groups=groups,
            prefills=prefills,
            sample_rows=torch.tensor(sample_rows, device=dev),
        )

    def _forward(self, tokens: torch.Tensor, step: _StepLayout) -> torch.Tensor:
        x = F.embedding(tokens, self.embed)
        n_tok, hd, kvh = tokens.shape[0], self.layout.head_dim, self.layout.num_kv_heads
        q_dim, kv_dim = self.num_heads * hd, kvh * hd
        cos, sin = step.cos[:, None, :], step.sin[:, None, :]
        for i, w in enumerate(self.layers):
            h = _rms_norm(x, w.ln_in, self.eps)
            qkv = F.linear(h, w.qkv, w.qkv_bias)
            q = qkv[:, :q_dim].view(n_tok, self.num_heads, hd)
            k = qkv[:, q_dim : q_dim + kv_dim].view(n_tok, kvh, hd)
            v = qkv[:, q_dim + kv_dim :].view(n_tok, kvh, hd)
            if w.q_norm is not None:
                q, k = _rms_norm(q, w.q_norm, self.eps), _rms_norm(k, w.k_norm, self.eps)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            self.kv.write(i, step.slots, k, v.contiguous())
            attn = self._attention(i, q, k, v, step)
            x = x + F.linear(attn.reshape(n_tok, q_dim), w.o, w.o_bias)
            h = _rms_norm(x, w.ln_post, self.eps)
            gate_up = F.linear(h, w.gate_up)
            x = x + F.linear(self.act(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :], w.down)
        return x

    def _attention(self, layer: int, q, k, v, step: _StepLayout) -> torch.Tensor:
        """[T, heads, dim] outputs: decodes batched against gathered blocks, then each prefill chunk."""
        parts = []
        for group in step.decode_groups:
            parts.append(self._decode_attention(layer, q[group.start : group.end], group))
        for row0, n, start, blocks, mask in step.prefills:
            qc = q[row0 : row0 + n].transpose(0, 1)[None]
            if start == 0:
                kc = k[row0 : row0 + n].transpose(0, 1)[None]
                vc = v[row0 : row0 + n].transpose(0, 1)[None]
                out = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True, enable_gqa=True)
            else:
                kg, vg = self.kv.gather(layer, blocks)  # [kv_heads, tokens, dim]
                end = start + n
                out = F.scaled_dot_product_attention(
                    qc, kg[None, :, :end], vg[None, :, :end], attn_mask=mask, enable_gqa=True
                )
            parts.append(out[0].transpose(0, 1))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def _decode_attention(self, layer: int, q: torch.Tensor, group: _DecodeGroup) -> torch.Tensor:
        """A group of decodes at once. The query heads sharing a KV head are folded into the query length and the
        batch rides in the matmul batch: q [kv_heads, B, group, dim] against K/V [kv_heads, B, S, dim].
        Two batched matmuls with a float32 softmax: several times faster than CPU sdpa for one query token
        per request in bfloat16, and as fast in float32."""
        nd, kvh, hd = q.shape[0], self.layout.num_kv_heads, self.layout.head_dim
        kd, vd = self.kv.gather(layer, group.blocks, group.ids)
        qf = q.view(nd, kvh, self.num_heads // kvh, hd).transpose(0, 1)
        scores = torch.matmul(qf, kd.transpose(-1, -2)).float().mul_(hd**-0.5).add_(group.bias)
        out = torch.matmul(torch.softmax(scores, dim=-1).to(q.dtype), vd)
        return out.transpose(0, 1).reshape(nd, self.num_heads, hd)
