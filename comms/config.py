"""Network section of the node's config: where to listen, whom to dial, how often to announce.

Owned by comms; mounted as `network:` in the node's NodeConfig.
"""

from __future__ import annotations

from pathlib import Path

import multiaddr
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from comms.stream_guard import StreamGuardConfig
from protocols.ids import check_swarm_id


def _check_multiaddr(value: str, *, need_peer_id: bool) -> str:
    try:
        addr = multiaddr.Multiaddr(value)
    except Exception as err:
        raise ValueError(f"not a multiaddr: {value!r} ({err})") from err
    names = [p.name for p in addr.protocols()]
    if "tcp" not in names:
        raise ValueError(f"only TCP multiaddrs are supported, got {value!r}")
    if need_peer_id and "p2p" not in names:
        raise ValueError(f"bootstrap multiaddr must end in /p2p/<peer id>, got {value!r}")
    return value


class NetworkConfig(BaseModel):
    """libp2p host, gossip and membership settings."""

    model_config = ConfigDict(extra="forbid")

    swarm_id: str = Field("default", description="Name of the swarm; part of every gossip topic.")
    listen: list[str] = Field(
        default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"],
        description="TCP multiaddrs to listen on (port 0 allowed).",
    )
    peers: list[str] = Field(default_factory=list, description="Bootstrap peers: multiaddrs ending in /p2p/<id>.")
    swarm_key: Path | None = Field(None, description="Pre-shared key file (libp2p pnet swarm.key format).")
    identity: Path | None = Field(None, description="Ed25519 identity file; created when missing.")
    heartbeat_s: float = Field(2.0, gt=0, le=3600, description="Period of the PeerAnnounce.")
    peer_timeout_s: float = Field(
        10.0, gt=0, le=86_400, description="Shortest expiry of a peer: it is dropped once neither heard from, nor "
        "answering, nor connected for this long or 3 of its status periods (stretched to the gaps observed), if longer."
    )  # fmt: skip
    dial_timeout_s: float = Field(5.0, gt=0, le=300)
    request_timeout_s: float = Field(10.0, gt=0, le=3600, description="Deadline of one request on a stream.")
    max_dial_peers: int = Field(16, ge=0, le=1024, description="Dial announced peers until this many connections.")
    # Membership at scale (swarm/runtime/membership.py, gossip_policy.py): bounded tables, adaptive periods.
    max_peers: int = Field(2048, ge=8, le=1_000_000, description="Bound of the membership table (entries).")
    max_peers_per_model: int = Field(256, ge=4, le=1_000_000, description="Bound of the serving peers kept per model.")
    status_budget_msgs_s: float = Field(
        25.0, gt=0, le=10_000, description="Status messages per second a node expects to receive: the status period "
        "is max(heartbeat_s, estimated swarm size / this)."
    )  # fmt: skip
    route_sample: int = Field(4, ge=2, le=1024, description="Serving peers a request's route is chosen among (d).")
    load_max_age_s: float = Field(
        4.0, gt=0, le=3600, description="A serving peer's load older than this is asked for again before routing."
    )
    load_query_timeout_s: float = Field(0.5, gt=0, le=60, description="Deadline of one load query.")
    stream_guard: StreamGuardConfig = Field(default_factory=StreamGuardConfig)

    @field_validator("swarm_id")
    @classmethod
    def _swarm_id(cls, value: str) -> str:
        return check_swarm_id(value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one listen multiaddr is required")
        return [_check_multiaddr(v, need_peer_id=False) for v in value]

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: list[str]) -> list[str]:
        return [_check_multiaddr(v, need_peer_id=True) for v in value]

    @model_validator(mode="after")
    def _timeouts(self) -> NetworkConfig:
        if self.peer_timeout_s <= self.heartbeat_s:
            raise ValueError(
                f"peer_timeout_s ({self.peer_timeout_s}) must be greater than heartbeat_s ({self.heartbeat_s})"
            )
        return self
