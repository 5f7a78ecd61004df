"""A process without the swarm key, written with plain hivemind (not our averaging code): it connects to a keyed
averaging peer and tries the DHT and every averaging RPC, then prints one JSON line saying what each attempt got.

Run as `python -m tests.integration.keyless_outsider PREFIX PEER_ID MADDR...` (a fresh interpreter: hivemind and
libp2p cannot share one).
"""

from __future__ import annotations

import asyncio
import json
import sys

import hivemind
from hivemind.p2p import P2P, PeerID
from hivemind.proto import averaging_pb2

SERVICER = "_StateServingAverager"  # the class name is part of hivemind's handler names
TIMEOUT_S = 10.0


async def _first_messages(p2p: P2P, peer: PeerID, handle: str, request: object, reply_type: type) -> str:
    try:
        stream = await p2p.iterate_protobuf_handler(peer, handle, request, reply_type)
        count = 0
        async for _ in stream:
            count += 1
        return f"answered with {count} message(s)"
    except Exception as err:  # the outcome is what is reported
        return f"refused: {type(err).__name__}"


async def main(prefix: str, peer_id: str, maddrs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        dht = hivemind.DHT(initial_peers=maddrs, start=True, startup_timeout=TIMEOUT_S)
        out["dht"] = "joined"
        dht.shutdown()
    except Exception as err:
        out["dht"] = f"refused: {type(err).__name__}"
    p2p = await P2P.create(initial_peers=maddrs)
    peer = PeerID.from_base58(peer_id)
    name = f"{prefix}::{SERVICER}"
    calls = {
        "download_state": ("rpc_download_state", averaging_pb2.DownloadRequest(), averaging_pb2.DownloadData),
        "join_group": ("rpc_join_group", averaging_pb2.JoinRequest(), averaging_pb2.MessageFromLeader),
        "aggregate_part": (
            "rpc_aggregate_part",
            averaging_pb2.AveragingData(group_id=b"x", weight=1.0),
            averaging_pb2.AveragingData,
        ),
    }
    for key, (method, request, reply_type) in calls.items():
        out[key] = await asyncio.wait_for(
            _first_messages(p2p, peer, f"{name}.{method}", request, reply_type), TIMEOUT_S * 2
        )
    await p2p.shutdown()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))))
