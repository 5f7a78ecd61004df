"""In-process replay of `swarm bench train --quick` for tuning (the figures in train_quick.md's tuning table).

The 4 peers of every system live in one process: same configs, warm start, shards, batches and outer optimizers
as the bench, with the codec's round trip applied to what each peer sends and to the group's mean, and no network
(NoLoCo's pairs are a seeded permutation per round, as hivemind's matchmaking would draw them; a streaming
fragment's average lands at once, without the overlapped inner step). It reproduced the bench's losses to 4
digits (ddp 1.5353, DiLoCo 1.5792 at H=32, int8, outer 0.7/0.9, as the bench counted). From the repository root:
`PYTHONPATH=$PWD python docs/results/train_quick_replay.py '{"outer_momentum": 0.5, "_systems": ["ddp", "diloco"]}'`
(top-level keys override every system's config; `_per` overrides one system's; `_systems` picks systems).
"""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from comms.codecs import make_codec
from training.bench import _warm_start, bench_configs
from training.data import TokenData, load_corpus
from training.trainer import TrainingPeer, flatten, unflatten

torch.set_num_threads(1)
WORLD = 4


def peers_for(cfg, data, warm):
    ps = []
    for r in range(WORLD):
        p = TrainingPeer(cfg, data, peer_id=f"rank-{r}", shard_index=r, num_shards=WORLD)
        p.start_from(warm)
        ps.append(p)
    return ps


def roundtrip(codec, flat):
    return codec.decode(codec.encode(flat))


def run(system, cfg, data, warm, steps):
    ps = peers_for(cfg, data, warm)
    codec = make_codec(cfg.codec, cfg.codec_block_size)
    if system == "ddp":
        p = ps[0]
        for s in range(steps):
            grads = None
            for r in range(WORLD):
                q = ps[r]
                batch = data.batch(q.shard, cfg.batch_size, q.shard_seed, s)
                p.inner.backward(batch)
                g = [x.grad.clone() for x in p.inner.params]
                p.inner.optimizer.zero_grad(set_to_none=True)
                grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
            for x, g in zip(p.inner.params, grads, strict=True):
                x.grad = g / WORLD
            p.inner.apply()
        return p.evaluate()
    for s in range(1, steps + 1):
        for q in ps:
            q.inner.step(q.next_batch())
            q.status.step += 1
        if system == "local_only":
            continue
        due = ps[0].outer.due(s)
        for f in due:
            outs = [q.outer.outgoing(f) for q in ps]
            L = ps[0].exchange_len
            flats = []
            for i, o in enumerate(outs):
                fl = flatten(o, L)
                if ps[i]._feedback is not None:
                    fl, res = ps[i]._feedback.add(f, fl)
                    ps[i]._feedback.keep(f, res)
                flats.append(roundtrip(codec, fl))
            if system == "noloco":
                gen = torch.Generator().manual_seed(s)
                perm = torch.randperm(WORLD, generator=gen).tolist()
                groups = [perm[0:2], perm[2:4]]
            else:
                groups = [list(range(WORLD))]
            for g in groups:
                mean = (
                    roundtrip(codec, sum(flats[i] for i in g) / len(g))
                    if system != "noloco"
                    else sum(flats[i] for i in g) / len(g)
                )
                for i in g:
                    ps[i].outer.incoming(f, unflatten(mean, outs[i]))
    if system == "local_only":
        return float(np.mean([q.evaluate() for q in ps]))
    return float(np.mean([q.evaluate_global() for q in ps]))


def main():
    quick = True
    configs, steps = bench_configs(quick)
    over = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    steps = over.pop("_steps", steps)
    warm_steps = over.pop("_warm", 1000)
    systems = over.pop("_systems", ["ddp", "local_only", "diloco", "noloco", "streaming_int4"])
    per = over.pop("_per", {})
    base = configs["ddp"].model_copy(update={**over, "total_steps": steps})
    tokens = load_corpus(None, base.max_corpus_bytes).numpy().astype(np.uint8)
    import hashlib

    key = hashlib.sha1(json.dumps([base.model_dump_json(), warm_steps]).encode()).hexdigest()[:10]
    path = f"/tmp/train-quick-replay-warm-{key}.safetensors"

    if os.path.exists(path + ".loss"):
        wl = float(Path(path + ".loss").read_text())
    else:
        wl = _warm_start(base, tokens, warm_steps, path)
        Path(path + ".loss").write_text(str(wl))
    warm = load_file(path)
    data = TokenData(torch.from_numpy(tokens.astype(np.int64)), base.eval_fraction, base.seq_len)
    out = {"warm": wl}
    for sname in systems:
        c = configs.get(sname, configs["ddp"]).model_copy(update={**over, "total_steps": steps, **per.get(sname, {})})
        t = time.time()
        out[sname] = run(sname, c, data, warm, steps)
        print(sname, round(out[sname], 4), f"{time.time() - t:.0f}s", flush=True)
    if "ddp" not in out:  # progress needs ddp's loss from the same run
        return
    d = out["warm"] - out["ddp"]
    print(
        json.dumps({k: round((out["warm"] - v) / d, 3) for k, v in out.items() if k not in ("warm",)}),
        "warm",
        round(wl, 4),
        "ddp",
        round(out["ddp"], 4),
        flush=True,
    )


main()
