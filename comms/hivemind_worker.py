"""The averaging process: a hivemind DHT and `DecentralizedAverager` serving one parent over a pipe.

Run as `python -m comms.hivemind_worker FD_IN FD_OUT` by `comms.averaging.HivemindAverager`. hivemind and
libp2p both register `crypto.pb` in protobuf's default descriptor pool, so they cannot live in one
interpreter; this fresh interpreter never imports libp2p. Requests and replies are dicts of plain values and
numpy arrays. The process exits when its parent's end of the pipe closes (including when the parent dies).
This module knows nothing about models or optimizers: it averages lists of float tensors.
"""

from __future__ import annotations

import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch
from hivemind import DHT, DecentralizedAverager
from hivemind.compression import CompressionInfo, NoCompression

from comms.hivemind_compression import SwarmCodecCompression, install


class _StateServingAverager(DecentralizedAverager):
    """Serves the state its parent last pushed (weights + outer optimizer state) to peers that join late."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.served_state: tuple[Any, list[torch.Tensor]] | None = None
        super().__init__(*args, **kwargs)

    def get_current_state(self) -> tuple[Any, list[torch.Tensor], list[CompressionInfo]]:
        if self.served_state is None:
            return {"empty": True}, [], []
        metadata, tensors = self.served_state
        return metadata, tensors, [CompressionInfo.from_tensor(t, key=i) for i, t in enumerate(tensors)]


class Worker:
    """Owns the DHT and averager; each `handle_*` method answers one request kind."""

    def __init__(self, init: dict[str, Any]) -> None:
        self.compression: SwarmCodecCompression = install(
            init["codec"], init["codec_block_size"], init.get("bandwidth_mbps")
        )
        self.dht = DHT(
            initial_peers=list(init["initial_peers"]),
            host_maddrs=list(init["host_maddrs"]),
            start=True,
            startup_timeout=init["startup_timeout_s"],
        )
        tensors = [torch.zeros(tuple(shape), dtype=torch.float32) for shape in init["shapes"]]
        allreduce_timeout = init["allreduce_timeout_s"]
        self.averager = _StateServingAverager(
            tensors,
            self.dht,
            start=True,
            prefix=init["prefix"],
            target_group_size=init["target_group_size"],
            min_group_size=init["min_group_size"],
            min_matchmaking_time=init["matchmaking_time_s"],
            request_timeout=init["request_timeout_s"],
            allreduce_timeout=allreduce_timeout,
            sender_timeout=allreduce_timeout / 4,
            reducer_timeout=allreduce_timeout / 2,
            next_chunk_timeout=allreduce_timeout / 2,
            compression=self.compression,
            state_compression=NoCompression(),
            declare_state_period=init["declare_state_period_s"],
        )
        self.shapes = [tuple(s) for s in init["shapes"]]

    def hello(self) -> dict[str, Any]:
        return {
            "peer_id": str(self.dht.peer_id),
            "visible_maddrs": [str(m) for m in self.dht.get_visible_maddrs()],
        }

    def handle_step(self, req: dict[str, Any]) -> dict[str, Any]:
        arrays = req["tensors"]
        if [tuple(a.shape) for a in arrays] != self.shapes:
            return {"ok": False, "error": "shapes differ from the ones this averager was started with"}
        with self.averager.get_tensors() as tensors:
            for dst, src in zip(tensors, arrays, strict=True):
                dst.copy_(torch.from_numpy(src))
        if req.get("group_bits") is not None:
            self.averager.set_group_bits(req["group_bits"])
        started = time.monotonic()
        try:
            gathered = self.averager.step(
                gather={"round": req["round"]}, weight=req["weight"], timeout=req["timeout_s"]
            )
        except Exception as err:  # hivemind raises many kinds (matchmaking, allreduce, timeouts)
            return {
                "ok": False,
                "error": f"{type(err).__name__}: {err}",
                "elapsed_s": time.monotonic() - started,
            }
        if not gathered:
            return {"ok": False, "error": "no group formed", "elapsed_s": time.monotonic() - started}
        with self.averager.get_tensors() as tensors:
            out = [t.detach().numpy().copy() for t in tensors]
        return {
            "ok": True,
            "tensors": out,
            "group_size": len(gathered),
            "peers": sorted(str(p) for p in gathered),
            "rounds": sorted(int(v.get("round", -1)) if isinstance(v, dict) else -1 for v in gathered.values()),
            "elapsed_s": time.monotonic() - started,
        }

    def handle_share_state(self, req: dict[str, Any]) -> dict[str, Any]:
        self.averager.served_state = (req["metadata"], [torch.from_numpy(a) for a in req["tensors"]])
        return {"ok": True}

    def handle_load_state(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = self.averager.load_state_from_peers(timeout=req["timeout_s"])
        except Exception as err:
            return {"ok": False, "error": f"{type(err).__name__}: {err}"}
        if loaded is None or (isinstance(loaded[0], dict) and loaded[0].get("empty")):
            return {"ok": False, "error": "no peer had state to share"}
        metadata, tensors = loaded
        return {
            "ok": True,
            "metadata": metadata,
            "tensors": [t.detach().float().numpy().copy() for t in tensors],
        }

    def shutdown(self) -> None:
        self.averager.shutdown()
        self.dht.shutdown()


def serve(conn_in: Connection, conn_out: Connection) -> None:
    """Answer requests until the parent closes the pipe or asks to stop."""
    init = conn_in.recv()
    try:
        worker = Worker(init)
    except Exception as err:
        conn_out.send({"ok": False, "error": f"{type(err).__name__}: {err}"})
        return
    try:
        conn_out.send({"ok": True, **worker.hello()})
        handlers = {
            "step": worker.handle_step,
            "share_state": worker.handle_share_state,
            "load_state": worker.handle_load_state,
        }
        while True:
            try:
                req = conn_in.recv()
            except (EOFError, OSError):
                break
            if req["op"] == "stop":
                break
            reply = handlers[req["op"]](req)
            reply["counters"] = worker.compression.snapshot()
            conn_out.send(reply)
    finally:
        worker.shutdown()


def main() -> None:
    fd_in, fd_out = int(sys.argv[1]), int(sys.argv[2])
    np.seterr(all="ignore")
    torch.set_num_threads(1)  # averaging small parts: extra threads only spin
    serve(Connection(fd_in, writable=False), Connection(fd_out, readable=False))


if __name__ == "__main__":
    main()
