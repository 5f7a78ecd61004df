"""In-process replay of `swarm bench train --quick` for tuning (the figures in train_quick.md's tuning tables).

The 4 peers of every system live in one process: same configs, warm start (`training.bench._warm_start`), shards,
batches and outer optimizers as the bench, with the codec's round trip applied to what each peer sends and to the
group's mean, and no network (NoLoCo's pairs are a seeded permutation per round, as the bench's per-round lead
delays make hivemind draw them; a streaming fragment's average lands at once, without the overlapped inner step).
From the repository root:
`PYTHONPATH=$PWD python docs/results/train_quick_replay.py '{"outer_momentum": 0.5, "_systems": ["ddp", "diloco"]}'`
(top-level keys override every system's config; `_per` overrides one system's, keyed by the system's name or by
`name:label` for a variant of it listed in `_systems`; `_systems` picks systems; `_curve` prints eval losses
along the way; `_warm` and `_steps` change the warm start's and the run's step counts).
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from comms.codecs import make_codec
from training.bench import WARM_MIN_LR_RATIO, _warm_start, bench_configs
from training.data import TokenData, load_corpus
from training.trainer import TrainingPeer, flatten, unflatten

torch.set_num_threads(1)
WORLD = 4


def roundtrip(codec, flat):
    return codec.decode(codec.encode(flat))


def run(system, cfg, data, warm, steps, curve):
    ps = []
    for r in range(WORLD):
        p = TrainingPeer(cfg, data, peer_id=f"rank-{r}", shard_index=r, num_shards=WORLD)
        p.start_from(warm)
        ps.append(p)
    codec = make_codec(cfg.codec, cfg.codec_block_size)
    every = max(1, steps // 8)
    if system == "ddp":
        p = ps[0]
        for s in range(steps):
            grads = None
            for q in ps:
                p.inner.backward(data.batch(q.shard, cfg.batch_size, q.shard_seed, s))
                g = [x.grad.clone() for x in p.inner.params]
                p.inner.optimizer.zero_grad(set_to_none=True)
                grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
            for x, g in zip(p.inner.params, grads, strict=True):
                x.grad = g / WORLD
            p.inner.apply()
            if curve and (s + 1) % every == 0:
                print("  ", s + 1, round(p.evaluate(), 4), flush=True)
        return p.evaluate()
    for s in range(1, steps + 1):
        for q in ps:
            q.inner.step(q.next_batch())
            q.status.step += 1
        for f in ps[0].outer.due(s) if system != "local_only" else []:
            outs = [q.outer.outgoing(f) for q in ps]
            flats = []
            for q, o in zip(ps, outs, strict=True):
                fl = flatten(o, q.exchange_len)
                if q._feedback is not None:
                    fl, res = q._feedback.add(f, fl)
                    q._feedback.keep(f, res)
                flats.append(roundtrip(codec, fl))
            if system == "noloco":
                perm = torch.randperm(WORLD, generator=torch.Generator().manual_seed(s)).tolist()
                groups = [perm[i : i + cfg.target_group_size] for i in range(0, WORLD, cfg.target_group_size)]
            else:
                groups = [list(range(WORLD))]
            for g in groups:
                mean = sum(flats[i] for i in g) / len(g)
                if system != "noloco":  # the reducers send averages back in the codec (NoLoCo's is fp16)
                    mean = roundtrip(codec, mean)
                for i in g:
                    ps[i].outer.incoming(f, unflatten(mean, outs[i]))
        if curve and s % every == 0:
            losses = [q.evaluate() if system == "local_only" else q.evaluate_global() for q in ps]
            print("  ", s, round(float(np.mean(losses)), 4), flush=True)
    if system == "local_only":
        return float(np.mean([q.evaluate() for q in ps]))
    return float(np.mean([q.evaluate_global() for q in ps]))


def main():
    configs, steps = bench_configs(True)
    over = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    steps = over.pop("_steps", steps)
    warm_steps = over.pop("_warm", 1000)
    systems = over.pop("_systems", ["ddp", "local_only", "diloco", "noloco", "streaming_int4"])
    per = over.pop("_per", {})
    curve = over.pop("_curve", False)
    base = configs["ddp"]
    tokens = load_corpus(None, base.max_corpus_bytes).numpy().astype(np.int32)  # EOS (257) ends documents
    data = TokenData(torch.from_numpy(tokens.astype(np.int64)), base.eval_fraction, base.seq_len)
    key = hashlib.sha1(json.dumps([base.model_dump_json(), warm_steps, WARM_MIN_LR_RATIO]).encode()).hexdigest()[:10]
    path = f"/tmp/train-quick-replay-warm-{key}.safetensors"
    if os.path.exists(path + ".loss"):
        wl = float(Path(path + ".loss").read_text())
    else:
        wl = _warm_start(base, tokens, warm_steps, Path(path), lambda _done, _total: None)
        Path(path + ".loss").write_text(str(wl))
    warm = load_file(path)
    out = {"warm": wl}
    for name in systems:
        system = name.split(":")[0]
        cfg = configs[system].model_copy(update={**over, "total_steps": steps, **per.get(name, {})})
        t = time.time()
        out[name] = run(system, cfg, data, warm, steps, curve)
        print(name, round(out[name], 4), f"{time.time() - t:.0f}s", flush=True)
    if "ddp" not in out:  # progress needs ddp's loss from the same run
        return
    gained = out["warm"] - out["ddp"]
    progress = {k: round((out["warm"] - v) / gained, 3) for k, v in out.items() if k != "warm"}
    print(json.dumps(progress), "warm", round(wl, 4), "ddp", round(out["ddp"], 4), flush=True)


main()
