"""The stream guard's bookkeeping with a stepped clock, its containment of whatever a handler raises, and the
frame follower that tells a truncated or oversized gossip RPC from an orderly end."""

from __future__ import annotations

import pytest
import trio

from comms.metrics import NetMetrics
from comms.stream_guard import UNNEGOTIATED, StreamGuard, StreamGuardConfig, _RpcFraming
from protocols.errors import ProtocolError, describe_error
from protocols.framing import encode_uvarint


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_guard(**config: float) -> tuple[StreamGuard, Clock, NetMetrics]:
    clock, metrics = Clock(), NetMetrics()
    return StreamGuard(StreamGuardConfig(**config), metrics, clock), clock, metrics


def test_a_peer_is_dropped_at_the_threshold_within_the_window_and_banned_for_ban_s() -> None:
    guard, clock, metrics = make_guard(max_bad_streams=3, window_s=10, ban_s=60)
    assert [guard.strike("peer-a", "/p", "bad") for _ in range(2)] == [False, False]
    assert guard.strike("peer-b", "/p", "bad") is False  # counts are per peer
    assert guard.strike("peer-a", "/q", "bad") is True
    assert metrics.stream_errors == {"/p": 3, "/q": 1}
    assert metrics.peers_dropped == {"bad_streams": 1}
    assert guard.is_banned("peer-a") and not guard.is_banned("peer-b")
    clock.now += 59.9
    assert guard.is_banned("peer-a")
    clock.now += 0.2
    assert not guard.is_banned("peer-a")


def test_strikes_older_than_the_window_are_forgotten() -> None:
    guard, clock, metrics = make_guard(max_bad_streams=3, window_s=10, ban_s=60)
    for _ in range(2):
        assert guard.strike("peer-a", "/p", "bad") is False
        clock.now += 6  # each pair of strikes lies within 10 s, but never three of them
    assert guard.strike("peer-a", "/p", "bad") is False
    assert guard.strike("peer-a", "/p", "bad") is True
    assert metrics.stream_errors["/p"] == 4


class FakeStream:
    """What the guard touches of an inbound stream: its peer, its negotiated protocol, reset()."""

    def __init__(self, peer: str, protocol: str | None) -> None:
        self.muxed_conn = type("Conn", (), {"peer_id": peer})()
        self._protocol = protocol
        self.resets = 0

    def get_protocol(self) -> str | None:
        return self._protocol

    async def reset(self) -> None:
        self.resets += 1


async def test_wrapped_handler_contains_errors_and_groups_but_not_cancellation() -> None:
    guard, _clock, metrics = make_guard(max_bad_streams=2)
    dropped: list[str] = []

    async def raises_group(_stream: object) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fail, ValueError("deep inside a nursery"))

    async def raises_plain(_stream: object) -> None:
        raise ProtocolError(7, "garbage")

    stream = FakeStream("peer-a", "/meshsub/1.1.0")
    await guard.wrap(raises_group, dropped.append)(stream)  # type: ignore[arg-type]
    assert stream.resets == 1 and dropped == []
    unnegotiated = FakeStream("peer-a", None)
    await guard.wrap(raises_plain, dropped.append)(unnegotiated)  # type: ignore[arg-type]
    assert dropped == ["peer-a"]
    assert metrics.stream_errors == {"/meshsub/1.1.0": 1, UNNEGOTIATED: 1}

    # A banned peer's stream is refused before the handler runs.
    ran: list[object] = []

    async def records(s: object) -> None:
        ran.append(s)

    await guard.wrap(records, dropped.append)(FakeStream("peer-a", "/x"))  # type: ignore[arg-type]
    assert ran == [] and metrics.stream_errors["banned_peer"] == 1

    async def sleeps(_stream: object) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(0) as scope:  # cancellation passes through the guard untouched and uncounted
        await guard.wrap(sleeps, dropped.append)(FakeStream("peer-b", "/x"))  # type: ignore[arg-type]
    assert scope.cancelled_caught
    assert "/x" not in metrics.stream_errors


async def _fail(err: Exception) -> None:
    raise err


def test_describe_error_flattens_groups_to_one_line() -> None:
    group = ExceptionGroup("outer", [ValueError("a\nb"), ExceptionGroup("inner", [KeyError("k"), ValueError("a b")])])
    assert describe_error(group) == "ValueError: a b; KeyError: 'k'"
    assert describe_error(ProtocolError(11, "no such model", field="model")) == "NOT_FOUND (model): no such model"


@pytest.mark.parametrize(
    ("chunks", "inside", "too_large"),
    [
        ([encode_uvarint(3) + b"abc", encode_uvarint(1) + b"z"], False, None),  # two whole frames
        ([encode_uvarint(300), b"x" * 299], True, None),  # one byte short
        ([b"\x80"], True, None),  # a prefix cut after its first byte
        ([encode_uvarint(1 << 40)], True, 1 << 40),  # over the limit
    ],
)
async def test_rpc_framing_follows_frames_across_reads(chunks: list[bytes], inside: bool, too_large: int | None):
    class Source:
        def __init__(self) -> None:
            self.chunks = list(chunks)

        async def read(self, _n: int | None = None) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

    framing = _RpcFraming(Source(), max_frame_bytes=1 << 20)  # type: ignore[arg-type]
    while await framing.read(1 << 16):
        pass
    assert framing.inside_frame is inside
    assert framing.too_large == too_large
