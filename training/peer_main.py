"""A training peer as its own process: `python -m training.peer_main SPEC.json`.

The spec gives the training config, peer id, shard, initial hivemind peers, how many steps to run, a
per-step delay (to pace tests) and a directory where the peer writes `status.json`, its hivemind multiaddrs
and, after every outer round, its weights (`round-R.safetensors`). Used by tests and usable by a node that
prefers a process to a thread. It knows nothing about gossip.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from comms.averaging import HivemindAverager
from training.config import TrainingConfig
from training.data import TokenData, load_corpus
from training.model import load_tokenizer
from training.trainer import TrainingPeer, averaging_settings


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.rename(path)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out_dir"])
    torch.set_num_threads(1)
    cfg = TrainingConfig.model_validate(spec["config"])
    tokens = load_corpus(cfg.data_path, cfg.max_corpus_bytes, load_tokenizer(cfg.model))
    data = TokenData(tokens, cfg.eval_fraction, cfg.seq_len)
    peer = TrainingPeer(
        cfg, data, peer_id=spec["peer_id"], shard_index=spec["shard_index"], num_shards=spec["num_shards"]
    )
    settings = averaging_settings(
        cfg, prefix=spec.get("prefix", "swarm"), initial_peers=tuple(spec.get("initial_peers", ()))
    )
    settings = dataclasses.replace(settings, declare_state_period_s=2.0)
    with HivemindAverager(settings, [(peer.exchange_len,)], peer.model_hash) as averager:
        _write_json(out / "maddrs.json", averager.visible_maddrs)
        peer.averager = averager
        how = peer.resume_or_join(join_timeout_s=spec.get("join_timeout_s", 20.0) if spec.get("join") else None)
        delay = float(spec.get("step_delay_s", 0.0))
        end_step = peer.status.step + int(spec["steps"])
        _write_json(out / "status.json", {"started": how, "step": peer.status.step, "round": 0})
        while peer.status.step < end_step:
            peer.run(1)
            if delay:
                time.sleep(delay)
            st = peer.status
            if st.step % cfg.inner_steps == 0:
                weights = {n: p.detach().clone() for n, p in peer.inner.model.named_parameters()}
                save_file(weights, str(out / f"round-{st.round_index}.safetensors"))
                status = {"started": how, "step": st.step, "round": st.round_index, "loss": st.loss}
                status.update(exchanges_ok=st.exchanges_ok, exchanges_failed=st.exchanges_failed, resyncs=st.resyncs)
                status["last_group"] = peer.status.last_group
                _write_json(out / "status.json", status)
    peer.close()


if __name__ == "__main__":
    main()
