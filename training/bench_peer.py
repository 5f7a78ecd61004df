"""One peer of `swarm bench train`, run as `python -m training.bench_peer SPEC RANK` (a separate process).

The spec (JSON written by `training.bench`) names the system (ddp, diloco, noloco, streaming_int4), the
training config, the number of steps and a work directory that holds the corpus and is the rendezvous:
rank 0 publishes its hivemind multiaddrs (or every rank its ring port) there. The peer writes its losses,
bytes and wall time to `result-RANK.json`. It knows nothing about the other systems or the report.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comms.averaging import AveragingSettings, HivemindAverager
from training.config import TrainingConfig
from training.data import TokenData
from training.ring_allreduce import RingAllReduce
from training.trainer import TrainingPeer, flatten, unflatten


def _wait_for(path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s} s")
        time.sleep(0.1)
    return path.read_text()


def run_ddp(peer: TrainingPeer, spec: dict[str, Any], rank: int) -> dict[str, Any]:
    """Data-parallel baseline: full-precision gradient all-reduce (TCP ring) after every backward."""
    ring = RingAllReduce(
        rank,
        spec["world"],
        Path(spec["workdir"]),
        timeout_s=spec["timeout_s"],
        bandwidth_mbps=spec.get("bandwidth_mbps"),
    )
    params = peer.inner.params
    length = sum(p.numel() for p in params)
    st = peer.status
    try:
        for _ in range(spec["steps"]):
            loss = peer.inner.backward(peer.next_batch())
            flat = flatten([p.grad for p in params], length).numpy()
            ring.allreduce_mean_(flat)
            for p, g in zip(params, unflatten(torch.from_numpy(flat), params), strict=True):
                p.grad.copy_(g)
            peer.inner.apply()
            st.step += 1
            st.loss = loss
            st.history.append((st.step, loss))
            if st.step % spec["eval_every"] == 0:
                peer.evaluate()
    finally:
        ring.close()
    return {"bytes_sent": ring.bytes_sent, "bytes_received": ring.bytes_received, "bytes_counted": "tcp socket"}


def run_hivemind(peer: TrainingPeer, spec: dict[str, Any], rank: int, settings: AveragingSettings) -> dict[str, Any]:
    workdir = Path(spec["workdir"])
    if rank > 0:
        settings = AveragingSettings(
            **{**settings.__dict__, "initial_peers": tuple(json.loads(_wait_for(workdir / "maddrs.json", 120)))}
        )
    with HivemindAverager(settings, [(peer.exchange_len,)], peer.model_hash) as averager:
        if rank == 0:
            (workdir / "maddrs.tmp").write_text(json.dumps(averager.visible_maddrs))
            (workdir / "maddrs.tmp").rename(workdir / "maddrs.json")
        (workdir / f"ready-{rank}").write_text("1")
        for r in range(spec["world"]):  # start training together so the first round finds everyone
            _wait_for(workdir / f"ready-{r}", 120)
        peer.averager = averager
        peer.run(spec["steps"], eval_every=spec["eval_every"])
        counters = averager.counters
    return {
        "bytes_sent": counters.bytes_sent,
        "bytes_received": counters.bytes_received,
        "bytes_counted": "serialized tensor messages handed to hivemind streams",
        "parts_refused": counters.parts_refused,
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    rank = int(sys.argv[2])
    torch.set_num_threads(1)
    cfg = TrainingConfig.model_validate(spec["config"])
    tokens = torch.from_numpy(np.load(Path(spec["workdir"]) / "tokens.npy").astype(np.int64))
    data = TokenData(tokens, cfg.eval_fraction, cfg.seq_len)
    labels = [f"rank-{r}" for r in range(spec["world"])]
    peer = TrainingPeer(
        cfg, data, peer_id=labels[rank], shard_index=rank, num_shards=spec["world"], peers=lambda: labels
    )
    started = time.monotonic()
    if spec["system"] == "ddp":
        wire = run_ddp(peer, spec, rank)
    else:
        settings = AveragingSettings(
            prefix=f"bench{spec['system']}",
            codec=cfg.codec,
            codec_block_size=cfg.codec_block_size,
            target_group_size=cfg.target_group_size,
            min_group_size=cfg.min_group_size,
            matchmaking_time_s=cfg.matchmaking_time_s,
            allreduce_timeout_s=cfg.allreduce_timeout_s,
            request_timeout_s=cfg.request_timeout_s,
            bandwidth_mbps=spec.get("bandwidth_mbps"),
        )
        wire = run_hivemind(peer, spec, rank, settings)
    train_s = time.monotonic() - started
    final = peer.evaluate()
    peer.close()
    result = {
        "rank": rank,
        "final_eval_loss": final,
        "train_wall_s": train_s,
        "history": peer.status.history,
        "eval_history": peer.status.eval_history,
        "exchanges_ok": peer.status.exchanges_ok,
        "exchanges_failed": peer.status.exchanges_failed,
        **wire,
    }
    out = Path(spec["workdir"]) / f"result-{rank}.json"
    out.with_suffix(".tmp").write_text(json.dumps(result))
    out.with_suffix(".tmp").rename(out)


if __name__ == "__main__":
    main()
