"""The bounded membership table on a fake clock: a flood of identities (Sybil) or of announces never grows it past
its bounds nor evicts live peers; statuses keep peers alive for their own announced period; hearsay never
overrides what a peer said itself."""

from __future__ import annotations

from protocols import Load, PeerAnnounce, TrainingState
from protocols.status import PeerStatus
from swarm.runtime.membership import Membership


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def announce(peer: str, *, model: str = "", ts: int = 1, seq: int = 0, addrs: list[str] | None = None) -> PeerAnnounce:
    roles = ["serve"] if model else ["train"]
    return PeerAnnounce(peer_id=peer, addrs=addrs or [], version="t", timestamp_ms=ts, roles=roles, model_id=model,
                        seq=seq)  # fmt: skip


def status(peer: str, seq: int, period_s: float = 2.0, **fields) -> PeerStatus:  # type: ignore[no-untyped-def]
    return PeerStatus(peer_id=peer, seq=seq, timestamp_ms=seq, period_s=period_s, **fields)


def test_a_sybil_flood_stays_within_bounds_and_evicts_no_live_peer() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock, max_peers=64, max_per_model=16)
    honest = [f"honest-{i}" for i in range(40)]
    for i, peer in enumerate(honest):
        table.observe(announce(peer, model="m" if i < 10 else ""))
    clock.now += 1.0
    for i in range(5000):  # one attacker, 5000 identities in 5 s, all claiming to serve the model
        table.observe(announce(f"sybil-{i}", model="m"))
        clock.now += 0.001
        if i % 2000 == 0:  # honest peers go on with their 2 s statuses
            for peer in honest:
                table.observe_status(status(peer, seq=i + 1))
    assert len(table) <= 64 and table.serving_count("m") <= 16
    assert all(peer in table for peer in honest)
    assert table.refused_full >= 5000 - 24
    assert len(table.size) <= table.size.k


def test_flooded_announces_of_one_peer_hold_one_entry() -> None:
    table = Membership("self", peer_timeout_s=10, clock=Clock(), max_peers=64)
    for seq in range(10_000):
        table.observe(announce("loud", model="m", ts=seq, seq=seq))
    assert len(table) == 1 and table.serving_count("m") == 1
    assert table.get("loud").announce.seq == 9_999


def test_silent_sybils_make_room_for_a_new_honest_peer() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock, max_peers=16, max_per_model=8)
    for i in range(100):
        table.observe(announce(f"sybil-{i}", model="m"))
    assert not table.observe(announce("late", model="m"))
    clock.now += 6.0  # past half their expiry: a newcomer may take the stalest place
    assert table.observe(announce("late", model="m"))
    assert table.serving_count("m") <= 8
    clock.now += 20.0
    assert "late" in table.expire() and len(table) == 0


def test_status_merges_progress_and_keeps_a_peer_for_its_own_period() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    table.observe(announce("p", model="m"))
    load = Load(running=3, predicted_ttft_ms=40.0)
    assert table.observe_status(status("p", seq=5, period_s=100.0, load=load, training=TrainingState(round=2)))
    entry = table.get("p")
    assert entry.announce.load == load and entry.announce.training.round == 2
    assert entry.announce.model_id == "m"  # the rarely-changing part is untouched
    assert not table.observe_status(status("p", seq=4))  # older
    assert not table.observe_status(status("stranger", seq=9))  # unknown peers wait for their announce
    clock.now += 250.0  # silent 2.5 of its periods: still there
    assert table.expire() == []
    clock.now += 60.0
    assert table.expire() == ["p"]


def test_hearsay_fills_a_view_but_never_overrides_the_peer_itself() -> None:
    clock = Clock()
    table = Membership("self", peer_timeout_s=10, clock=clock)
    assert table.observe(announce("p", model="m", ts=1, addrs=["/told"]), hearsay=True)
    assert table.get("p").hearsay
    table.observe(announce("p", model="m", ts=2, addrs=["/own"]))
    assert not table.get("p").hearsay
    table.observe(announce("p", model="evil", ts=3, addrs=["/forged"]), hearsay=True)
    assert table.get("p").announce.addrs == ["/own"] and table.serving_count("evil") == 0
