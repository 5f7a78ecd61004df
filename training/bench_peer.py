"""One peer of `swarm bench train`, run as `python -m training.bench_peer WORKDIR RANK` (its own process).

`WORKDIR/spec.json` (written by `training.bench`) lists the systems (ddp, local_only, diloco, noloco,
streaming_int4),
their training configs and step count; the peer runs them in turn from a fresh model each, using
`WORKDIR/<system>/` as the rendezvous (rank 0's hivemind multiaddrs, or every rank's ring port) and writing
its losses, bytes and wall time to `WORKDIR/<system>/result-RANK.json`: `bytes_*`, the kernel's counts for the
TCP sockets that carried the exchange (the ring's for ddp; for hivemind everything its daemon moved: tensor
parts, matchmaking, DHT, libp2p framing and handshakes), and `payload_bytes_*`, what was handed to them (the
ring's sends for ddp, the serialized tensor messages for hivemind). It knows nothing about the report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from comms.averaging import AveragingSettings, HivemindAverager
from comms.tcp_counters import TcpByteCounter, TcpCountersUnavailable
from training.config import TrainingConfig
from training.data import TokenData
from training.ring_allreduce import RingAllReduce
from training.trainer import TrainingPeer, averaging_settings, flatten, unflatten


class StretchedSteps:
    """A device `factor` times slower: each call of the wrapped step is followed by a sleep of (factor - 1) times
    its duration. Sleeping, not computing: the other peers' processes keep the CPU they would have."""

    def __init__(self, step: Any, factor: float) -> None:
        self.step = step
        self.factor = factor

    def __call__(self, *args: Any) -> Any:
        started = time.monotonic()
        out = self.step(*args)
        time.sleep((self.factor - 1.0) * (time.monotonic() - started))
        return out


def straggler_factor(spec: dict[str, Any], rank: int) -> float:
    """How many times slower this rank's steps are: the last rank is the straggler (rank 0 hosts the rendezvous)."""
    factor = spec.get("straggler") or 1.0
    return float(factor) if rank == spec["world"] - 1 else 1.0


_BYTE_FIELDS = ("bytes_sent", "bytes_received", "payload_bytes_sent", "payload_bytes_received")


def _wait_for(path: Path, timeout_s: float) -> Path:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s} s")
        time.sleep(0.1)
    return path


def run_ddp(peer: TrainingPeer, spec: dict[str, Any], rank: int) -> dict[str, Any]:
    """Data-parallel baseline: full-precision gradient all-reduce (TCP ring) after every backward."""
    try:
        tcp: TcpByteCounter | None = TcpByteCounter(os.getpid())  # the ring's are this process's only TCP sockets
    except TcpCountersUnavailable:
        tcp = None  # then the ring's own counts stand in, as the averager's stand in for its sockets'
    start = tcp.poll() if tcp is not None else None
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
    backward = StretchedSteps(peer.inner.backward, straggler_factor(spec, rank))  # every step waits for it
    try:
        for _ in range(spec["steps"]):
            loss = backward(peer.next_batch())
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
        end = tcp.poll() if tcp is not None else None
    finally:
        ring.close()
    payload = {"payload_bytes_sent": ring.bytes_sent, "payload_bytes_received": ring.bytes_received}
    if start is None or end is None:
        return {
            **payload,
            "bytes_sent": ring.bytes_sent,
            "bytes_received": ring.bytes_received,
            "bytes_counted": "ring sends",
        }
    return {
        **payload,
        "bytes_sent": end.sent - start.sent,
        "bytes_received": end.received - start.received,
        "bytes_counted": "tcp socket",
    }


def run_local_only(peer: TrainingPeer, spec: dict[str, Any]) -> None:
    """No-communication baseline: the same inner steps on this peer's shard alone, no outer step at all."""
    st = peer.status
    for _ in range(spec["steps"]):
        st.loss = peer.inner.step(peer.next_batch())
        st.step += 1
        st.history.append((st.step, st.loss))
        if st.step % spec["eval_every"] == 0:
            peer.evaluate()


def run_hivemind(peer: TrainingPeer, spec: dict[str, Any], rank: int, settings: AveragingSettings) -> dict[str, Any]:
    workdir = Path(spec["workdir"])
    if rank > 0:
        settings = AveragingSettings(
            **{
                **settings.__dict__,
                "initial_peers": tuple(json.loads(_wait_for(workdir / "maddrs.json", 120).read_text())),
            }
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
        "bytes_counted": counters.bytes_counted_at,
        "payload_bytes_sent": counters.payload_bytes_sent,
        "payload_bytes_received": counters.payload_bytes_received,
        "parts_refused": counters.parts_refused,
    }


def run_one(system: str, spec: dict[str, Any], tokens: torch.Tensor, rank: int) -> dict[str, Any]:
    """Train one system from a fresh model; `spec["workdir"]/system` is its rendezvous."""
    cfg = TrainingConfig.model_validate(spec["configs"][system])
    data = TokenData(tokens, cfg.eval_fraction, cfg.seq_len)
    labels = [f"rank-{r}" for r in range(spec["world"])]
    peer = TrainingPeer(
        cfg, data, peer_id=labels[rank], shard_index=rank, num_shards=spec["world"], peers=lambda: labels
    )
    if spec.get("warm_start"):
        peer.start_from(load_file(spec["warm_start"]))
    if straggler_factor(spec, rank) != 1.0 and system != "ddp":  # ddp stretches its backward (run_ddp)
        peer.inner.step = StretchedSteps(peer.inner.step, straggler_factor(spec, rank))  # type: ignore[method-assign]
    sys_spec = {**spec, "workdir": str(Path(spec["workdir"]) / system)}
    started = time.monotonic()
    if system == "ddp":
        wire = run_ddp(peer, sys_spec, rank)
    elif system == "local_only":
        run_local_only(peer, sys_spec)
        wire = {**dict.fromkeys(_BYTE_FIELDS, 0), "bytes_counted": "nothing sent"}
    else:
        settings = averaging_settings(cfg, prefix=f"bench{system}", bandwidth_mbps=spec.get("bandwidth_mbps"))
        wire = run_hivemind(peer, sys_spec, rank, settings)
    local = peer.evaluate()
    # local_only: each peer's own weights (no outer state is ever agreed on); the report averages the peers
    final = local if system in ("ddp", "local_only") else peer.evaluate_global()
    peer.close()
    return {
        "rank": rank,
        "final_eval_loss": final,
        "final_eval_loss_local": local,
        "wall_s": time.monotonic() - started,
        "history": list(peer.status.history),
        "eval_history": list(peer.status.eval_history),
        "exchanges_ok": peer.status.exchanges_ok,
        "exchanges_failed": peer.status.exchanges_failed,
        "rounds_cut": peer.status.rounds_cut,
        **wire,
    }


def main() -> None:
    workdir = Path(sys.argv[1])
    rank = int(sys.argv[2])
    spec = json.loads((workdir / "spec.json").read_text())
    torch.set_num_threads(1)
    tokens = torch.from_numpy(np.load(workdir / "tokens.npy").astype(np.int64))
    if spec.get("warm_start"):
        _wait_for(Path(spec["warm_start"]), spec["timeout_s"] * 15)  # the warm start took 5-7 min on a loaded machine
    for system in spec["systems"]:
        (workdir / system).mkdir(exist_ok=True)
        result = run_one(system, spec, tokens, rank)
        out = workdir / system / f"result-{rank}.json"
        out.with_suffix(".tmp").write_text(json.dumps(result))
        out.with_suffix(".tmp").rename(out)
        # all peers finish a system before any starts the next (no CPU stolen from a slower peer's last steps)
        for r in range(spec["world"]):
            _wait_for(workdir / system / f"result-{r}.json", spec["timeout_s"] * 5)


if __name__ == "__main__":
    main()
