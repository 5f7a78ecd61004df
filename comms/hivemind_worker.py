"""The averaging process: a hivemind DHT and `DecentralizedAverager` serving one parent over a pipe.

Run as `python -m comms.hivemind_worker FD_IN FD_OUT` by `comms.averaging.HivemindAverager`. hivemind and
libp2p both register `crypto.pb` in protobuf's default descriptor pool, so they cannot live in one
interpreter; this fresh interpreter never imports libp2p. Requests and replies are dicts of plain values and
numpy arrays. The process exits when its parent's end of the pipe closes (including when the parent dies).
The averager here returns every group member the same averaged values (see `_AverageReturningRunner`). Given
the swarm key, its DHT and averaging RPCs need proof of it (`comms.hivemind_auth`).
This module knows nothing about models or optimizers: it averages lists of float tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from multiprocessing.connection import Connection
from typing import Any

import hivemind
import numpy as np
import torch
from hivemind import DHT, DecentralizedAverager
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.partition import BannedException
from hivemind.compression import CompressionInfo, NoCompression, deserialize_torch_tensor
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import MPFuture
from hivemind.utils.asyncio import aiter_with_timeout, amap_in_executor, as_aiter, azip
from hivemind.utils.streaming import combine_from_streaming
from hivemind.utils.timed_storage import get_dht_time

from comms import hivemind_matchmaking, hivemind_reducer
from comms.hivemind_auth import SwarmKeyAuthorizer, SwarmKeyGate, SwarmKeyGuarded, derive_auth_key
from comms.hivemind_compression import SwarmCodecCompression, install
from comms.hivemind_reducer import RobustPartReducer, check_returned_averages
from comms.robust_average import PartPolicy

# The runner below overrides internals of this exact release; another one needs a review first.
HIVEMIND_VERSION = "1.1.12"
if hivemind.__version__ != HIVEMIND_VERSION:
    raise RuntimeError(f"comms.hivemind_worker is written for hivemind {HIVEMIND_VERSION}, not {hivemind.__version__}")


class _AverageReturningRunner(AllReduceRunner):
    """hivemind's butterfly all-reduce, except that a reducer returns each sender the average of its part,
    encoded with the swarm codec, instead of `average - sender's part`, and takes decode(encode(average)) itself.

    With hivemind's deltas and a lossy codec each sender adds a delta quantised against its own part to its own
    exact values, so group members end a round with different results and drift apart round after round. Here
    every member of a part decodes the same bytes: all members end with bitwise equal tensors (a part whose
    reducer failed keeps the member's own values, as in hivemind). Parts are combined by `RobustPartReducer`:
    senders' weights are bounded and bad parts excluded (`comms.robust_average`)."""

    def __init__(self, *, compression: SwarmCodecCompression, policy: PartPolicy, **kwargs: Any) -> None:
        super().__init__(compression=compression, **kwargs)
        self.compression = compression
        self.tensor_part_reducer = RobustPartReducer(
            self.tensor_part_reducer.part_shapes,
            self.tensor_part_reducer.num_senders,
            policy=policy,
            on_excluded=lambda _reason: compression.count_refused(),
        )
        own_index = self.ordered_peer_ids.index(self.peer_id)
        check_returned_averages(
            self.tensor_part_container, own_index, policy, compression.count_refused, own_weight=self.weight
        )
        self.tensor_part_container.return_deltas = False  # outputs are averages: a failed part keeps local values
        self._replying = 0  # senders whose parts this peer reduces and who are still being answered
        self._all_replied = asyncio.Event()
        self._all_replied.set()

    async def wait_for_replies(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until this peer, as a reducer, answered every sender: its own outputs can be
        complete while the last encoded averages are still on their way to the others, and the counts of bytes
        sent that go back with the round must include them."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._all_replied.wait(), timeout_s)

    async def _communicate_with_peer(self, peer_id: Any) -> None:
        if peer_id != self.peer_id:  # the remote reducer's reply is the encoded average: registered as it is
            await super()._communicate_with_peer(peer_id)
            return
        peer_index = self.ordered_peer_ids.index(peer_id)
        sender_index = self.sender_peer_ids.index(peer_id)
        for part_index, tensor_part in enumerate(self.parts_for_local_averaging):
            averaged = await self.tensor_part_reducer.accumulate_part(
                sender_index, part_index, tensor_part, weight=self.weight
            )
            self.tensor_part_container.register_processed_part(
                peer_index, part_index, self.compression.roundtrip(averaged)
            )

    def _encode(self, averaged: torch.Tensor) -> Any:
        return self.compression.compress(averaged, CompressionInfo.from_tensor(averaged))

    async def _accumulate_parts_streaming(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], sender_index: int
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        part_index = 0
        self._replying += 1
        self._all_replied.clear()
        try:
            loop = asyncio.get_event_loop()
            async for tensor_part, weight in amap_in_executor(
                lambda msg: (self.compression.extract(msg.tensor_part), msg.weight),
                stream,
                max_prefetch=self.tensor_part_container.prefetch,
            ):
                try:
                    averaged = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, tensor_part, weight=weight
                    )
                    part_index += 1
                except BannedException:
                    break  # the sender was banned: its remaining parts are no longer aggregated
                reply = await loop.run_in_executor(None, self._encode, averaged)
                yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=reply)
        finally:
            self._replying -= 1
            if self._replying == 0:
                self._all_replied.set()
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])


MAX_DIGEST_CHARS = 128
MAX_DONORS = 64  # a late joiner asks each listed donor for its metadata: a flood of declarations costs no more
REPLIES_TIMEOUT_S = 5.0  # a sender that stops reading its averages does not hold the round longer than this


class _StateServingAverager(SwarmKeyGuarded, DecentralizedAverager):
    """Serves the state its parent last pushed (weights + outer optimizer state) to peers that join late."""

    def __init__(self, *args: Any, policy: PartPolicy, **kwargs: Any) -> None:
        self.served_state: tuple[Any, list[torch.Tensor]] | None = None
        self.policy = policy  # set before hivemind forks the averager process in super().__init__
        hivemind_reducer.install()
        super().__init__(*args, **kwargs)

    async def _run_allreduce_inplace_(
        self, tensors: Sequence[torch.Tensor], group_info: GroupInfo, group_id: bytes | None = None, **kwargs: Any
    ) -> None:
        """hivemind's version, with `_AverageReturningRunner` and its averages copied in (not deltas added). It
        does not re-declare this peer as a state donor after every round (a DHT store to every replica; the
        periodic declaration keeps it listed) and returns once its replies as a reducer are sent."""
        group_id = group_info.group_id if group_id is None else group_id
        runner = _AverageReturningRunner(
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
            policy=self.policy,
            **kwargs,
        )
        if group_id not in self._running_groups:
            raise RuntimeError(f"group {group_id!r} was not registered before its all-reduce")
        self._running_groups[group_id].set_result(runner)
        async for tensor, averaged in azip(as_aiter(*tensors), runner):
            tensor.copy_(averaged)
            self.last_updated = get_dht_time()
        await runner.wait_for_replies(REPLIES_TIMEOUT_S)

    def load_state_from(
        self, peer: str, timeout: float, min_step: int = 0, metadata_only: bool = False
    ) -> tuple[Any, list[torch.Tensor]] | None:
        """Download the state one given peer serves (hivemind's own `load_state_from_peers` picks the peer that
        claims the highest priority, which any peer can claim). A state whose metadata says `step` < `min_step`,
        or any state when `metadata_only`, comes back as its metadata alone, its tensors not fetched."""
        future: MPFuture = MPFuture()
        call = dict(peer=peer, timeout=timeout, min_step=min_step, metadata_only=metadata_only, future=future)
        self._outer_pipe.send(("_load_state_from_peer", [], call))
        return future.result(timeout=timeout + 5.0)

    async def _load_state_from_peer(
        self, peer: str, timeout: float, min_step: int, metadata_only: bool, future: MPFuture
    ) -> None:
        try:
            stub = self.get_stub(self._p2p, PeerID.from_base58(peer), namespace=self.prefix)
            stream = await asyncio.wait_for(stub.rpc_download_state(averaging_pb2.DownloadRequest()), timeout)
            metadata, parts, tensors = None, [], []
            async for message in aiter_with_timeout(stream, timeout=timeout):
                if message.metadata:
                    metadata = self.serializer.loads(message.metadata)
                    if metadata_only or _step_of(metadata) < min_step:  # skip its tensors
                        await stream.aclose()
                        future.set_result((metadata, []))
                        return
                if message.tensor_part.dtype and parts:  # a dtype starts the next tensor
                    tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                    parts = []
                parts.append(message.tensor_part)
            if parts:
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
            future.set_result(None if metadata is None else (metadata, tensors))
        except Exception as err:  # a dead or refusing peer: the caller decides what to do
            if not future.done():
                future.set_exception(err)

    def get_current_state(self) -> tuple[Any, list[torch.Tensor], list[CompressionInfo]]:
        if self.served_state is None:
            return {"empty": True}, [], []
        metadata, tensors = self.served_state
        return metadata, tensors, [CompressionInfo.from_tensor(t, key=i) for i, t in enumerate(tensors)]


def _step_of(metadata: Any) -> int:
    step = metadata.get("step") if isinstance(metadata, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else -1


MAX_PACE_S = 3600.0  # seconds per inner step: a claim above is no pace any peer keeps


def gathered_pace(value: Any) -> float | None:
    """The seconds per inner step a group member gathered (its pace over its last round), or None where it sent
    none or one that is not a finite number in (0, MAX_PACE_S] (peers are untrusted)."""
    pace = value.get("pace_s") if isinstance(value, dict) else None
    if isinstance(pace, bool) or not isinstance(pace, (int, float)):
        return None
    pace = float(pace)
    return pace if 0.0 < pace <= MAX_PACE_S else None


def gathered_member(value: Any) -> tuple[int, str]:
    """(round, state digest) a group member gathered; (-1, "") for what is missing or mistyped (peers are
    untrusted)."""
    value = value if isinstance(value, dict) else {}
    rnd, digest = value.get("round"), value.get("digest")
    rnd = rnd if isinstance(rnd, int) and not isinstance(rnd, bool) else -1
    digest = digest if isinstance(digest, str) and len(digest) <= MAX_DIGEST_CHARS else ""
    return rnd, digest


class Worker:
    """Owns the DHT and averager; each `handle_*` method answers one request kind."""

    def __init__(self, init: dict[str, Any]) -> None:
        self.compression: SwarmCodecCompression = install(
            init["codec"], init["codec_block_size"], init.get("bandwidth_mbps")
        )
        hivemind_matchmaking.install()
        key = derive_auth_key(init["swarm_key_hex"]) if init.get("swarm_key_hex") else None
        self.authorizer = None if key is None else SwarmKeyAuthorizer(key)
        self.dht = DHT(
            initial_peers=list(init["initial_peers"]),
            host_maddrs=list(init["host_maddrs"]),
            start=True,
            startup_timeout=init["startup_timeout_s"],
            authorizer=self.authorizer,
        )
        self.gate = None if key is None else SwarmKeyGate(key, self.dht.peer_id)
        if self.gate is not None:  # before the averager starts: its handlers are registered guarded, stubs check
            _StateServingAverager.install_gate(self.gate, init["request_timeout_s"])
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
            policy=PartPolicy(init["max_weight"], init["max_norm_ratio"]),
            state_compression=NoCompression(),
            declare_state_period=init["declare_state_period_s"],
            allow_state_sharing=False,  # declared a donor (a DHT store to every replica) once it has a state
        )
        self.shapes = [tuple(s) for s in init["shapes"]]
        self.matchmaking_time_s = float(init["matchmaking_time_s"])

    def counters(self) -> dict[str, int]:
        """The codec's byte and refusal counts, and the RPCs refused for want of the swarm key (by the DHT's and
        the averager's processes, counted in shared memory)."""
        refused = sum(x.refused for x in (self.authorizer, self.gate) if x is not None)
        return {**self.compression.snapshot(), "swarm_key_refused": refused}

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
        scheduled = None  # hivemind's default: now + the matchmaking period
        if req.get("lead_delay_s") is not None:
            scheduled = get_dht_time() + self.matchmaking_time_s + float(req["lead_delay_s"])
        try:
            gathered = self.averager.step(
                gather={"round": req["round"], "digest": req.get("digest", ""), "pace_s": req.get("pace_s")},
                weight=req["weight"],
                timeout=req["timeout_s"],
                scheduled_time=scheduled,
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
            "members": {str(p): gathered_member(v) for p, v in gathered.items()},
            "paces": {str(p): pace for p, v in gathered.items() if (pace := gathered_pace(v)) is not None},
            "elapsed_s": time.monotonic() - started,
        }

    def handle_share_state(self, req: dict[str, Any]) -> dict[str, Any]:
        self.averager.served_state = (req["metadata"], [torch.from_numpy(a) for a in req["tensors"]])
        if not self.averager.allow_state_sharing:
            self.averager.allow_state_sharing = True
        return {"ok": True}

    def handle_load_state(self, req: dict[str, Any]) -> dict[str, Any]:
        try:
            loaded = self.averager.load_state_from(
                req["peer"], req["timeout_s"], req.get("min_step", 0), bool(req.get("metadata_only"))
            )
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

    def handle_donors(self, req: dict[str, Any]) -> dict[str, Any]:
        """Peers that declared (in the DHT, where hivemind's `load_state_from_peers` looks) that they share a
        state. The priorities they declared are dropped: any peer can declare itself the best donor."""
        try:
            key = f"{self.averager.prefix}.all_averagers"
            found = self.dht.get(key, latest=True, return_future=True).result(timeout=req["timeout_s"])
        except Exception as err:  # a DHT failure: no donors known
            return {"ok": False, "error": f"{type(err).__name__}: {err}"}
        records = found.value if found is not None and isinstance(found.value, dict) else {}
        me = str(self.dht.peer_id)
        donors = []
        for subkey, record in records.items():
            try:
                peer = str(PeerID(subkey))
            except Exception:  # a malformed record from the network is skipped
                continue
            if peer != me and isinstance(getattr(record, "value", None), (int, float)):
                donors.append(peer)
        return {"ok": True, "donors": sorted(donors)[:MAX_DONORS]}

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
            "donors": worker.handle_donors,
        }
        while True:
            try:
                req = conn_in.recv()
            except (EOFError, OSError):
                break
            if req["op"] == "stop":
                break
            reply = handlers[req["op"]](req)
            reply["counters"] = worker.counters()
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
