"""Real hivemind averaging across 3 peers on 127.0.0.1 (each averager is its own process): the averaged
tensors equal a locally computed mean within the codec's stated error and are bitwise the same on every peer,
lossy codecs included; a different model hash never joins."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import pytest
import torch

from comms.averaging import AveragingError, AveragingResult, AveragingSettings, HivemindAverager
from comms.codecs import make_codec

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(180)]
SHAPES = [(1000,), (33, 7)]


def start_group(codec: str, hashes: list[str]) -> list[HivemindAverager]:
    first = HivemindAverager(AveragingSettings(prefix="avg", codec=codec, matchmaking_time_s=1.5), SHAPES, hashes[0])
    group = [first]
    try:
        first.start()
        for h in hashes[1:]:
            s = AveragingSettings(
                prefix="avg", codec=codec, matchmaking_time_s=1.5, initial_peers=tuple(first.visible_maddrs)
            )
            group.append(HivemindAverager(s, SHAPES, h))
            group[-1].start()
    except BaseException:
        for av in group:
            av.close()
        raise
    return group


@pytest.fixture
def closing() -> Iterator[list[HivemindAverager]]:
    made: list[HivemindAverager] = []
    yield made
    for av in made:
        av.close()


def step_all(group: list[HivemindAverager], data: list[list[torch.Tensor]]) -> list[AveragingResult | Exception]:
    out: list[AveragingResult | Exception] = [RuntimeError("not run")] * len(group)

    def run(i: int) -> None:
        try:
            out[i] = group[i].step(data[i], round_index=0, timeout_s=20.0)
        except AveragingError as err:
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(group))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def inputs(n: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return [[torch.randn(s, generator=gen) * (i + 1) for s in SHAPES] for i in range(n)]


@pytest.mark.parametrize("codec", ["fp32", "int8", "int4"])
def test_three_peers_average_matches_reference(codec: str, closing: list[HivemindAverager]) -> None:
    group = start_group(codec, ["h"] * 3)
    closing.extend(group)
    data = inputs(3)
    results = step_all(group, data)
    ref = [torch.stack([d[k] for d in data]).mean(0) for k in range(len(SHAPES))]
    c = make_codec(codec)
    for i, res in enumerate(results):
        assert isinstance(res, AveragingResult), res
        assert res.group_size == 3
        for k, (got, want) in enumerate(zip(res.tensors, ref, strict=True)):
            # the reducer's mean of decoded inputs (its own part exact), encoded and decoded once more
            scale = max(float(d[k].abs().max()) for d in data)
            bound = c.max_abs_error(torch.full((1,), scale)).item() * 4 + 1e-6
            err = float((got - want).abs().max())
            assert err <= bound, (i, k, err, bound)
        if codec == "fp32":
            assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(res.tensors, ref, strict=True))
    first = results[0]
    assert isinstance(first, AveragingResult)
    for res in results[1:]:  # every peer decoded the same encoded averages: no drift between peers
        assert isinstance(res, AveragingResult)
        assert all(torch.equal(a, b) for a, b in zip(res.tensors, first.tensors, strict=True))
    assert all(av.counters.bytes_sent > 0 and av.counters.bytes_received > 0 for av in group)
    assert all(av.counters.parts_refused == 0 for av in group)


def test_peer_with_another_model_hash_never_joins(closing: list[HivemindAverager]) -> None:
    group = start_group("fp32", ["h", "h", "other"])
    closing.extend(group)
    data = inputs(3)
    results = step_all(group, data)
    ref = [torch.stack([d[k] for d in data[:2]]).mean(0) for k in range(len(SHAPES))]
    for res in results[:2]:
        assert isinstance(res, AveragingResult) and res.group_size == 2
        assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(res.tensors, ref, strict=True))
    assert isinstance(results[2], AveragingError)


def test_refuses_to_send_non_finite_or_misshapen(closing: list[HivemindAverager]) -> None:
    av = HivemindAverager(AveragingSettings(prefix="bad"), SHAPES, "h")
    closing.append(av)
    av.start()
    bad = [torch.full(SHAPES[0], float("nan")), torch.zeros(SHAPES[1])]
    with pytest.raises(AveragingError, match="NaN"):
        av.step(bad, round_index=0, timeout_s=5.0)
    with pytest.raises(AveragingError, match="shapes"):
        av.step([torch.zeros(3)], round_index=0, timeout_s=5.0)


def test_socket_bytes_cover_the_exchanged_payload(closing: list[HivemindAverager]) -> None:
    """Two averagers, fp32: in a group of two every value is sent once to its reducer and its average once back,
    so each peer sends and receives 4 bytes per value, whatever the split. The kernel's counts for each peer's
    daemon sockets must cover that payload and the serialized messages, with bounded overhead."""
    n = 500_000
    shapes = [(n,)]
    a = HivemindAverager(AveragingSettings(prefix="tcp", codec="fp32", matchmaking_time_s=1.0), shapes, "h")
    closing.append(a)
    a.start()
    b = HivemindAverager(
        AveragingSettings(prefix="tcp", codec="fp32", matchmaking_time_s=1.0, initial_peers=tuple(a.visible_maddrs)),
        shapes,
        "h",
    )
    closing.append(b)
    b.start()
    assert a.counters.bytes_counted_at == b.counters.bytes_counted_at == "tcp socket"
    before = [dataclasses.replace(av.counters) for av in (a, b)]
    gen = torch.Generator().manual_seed(1)
    results = step_all([a, b], [[torch.randn(n, generator=gen)] for _ in range(2)])
    assert all(isinstance(r, AveragingResult) and r.group_size == 2 for r in results), results
    payload = 4 * n
    for av, old in zip((a, b), before, strict=True):
        sent, received = av.counters.bytes_sent - old.bytes_sent, av.counters.bytes_received - old.bytes_received
        messages_out = av.counters.payload_bytes_sent - old.payload_bytes_sent
        messages_in = av.counters.payload_bytes_received - old.payload_bytes_received
        assert payload <= messages_out <= sent < 3 * payload, (sent, messages_out)
        assert payload <= messages_in <= received < 3 * payload, (received, messages_in)
    # each daemon's sockets are its own: what one side's kernel saw acknowledged, the other's received
    for x, y, old_x, old_y in ((a, b, before[0], before[1]), (b, a, before[1], before[0])):
        sent = x.counters.bytes_sent - old_x.bytes_sent
        received = y.counters.bytes_received - old_y.bytes_received
        assert abs(sent - received) <= 0.05 * payload, (sent, received)  # reads up to a poll apart


def test_load_state_from_a_named_peer(closing: list[HivemindAverager]) -> None:
    """A peer whose state left the group's takes the state of one named member, not whichever hivemind picks."""
    group = start_group("fp32", ["h"] * 3)
    closing.extend(group)
    a, b, c = group
    a.share_state({"round": 1, "step": 8, "who": "a"}, [torch.zeros(4)])
    b.share_state({"round": 1, "step": 8, "who": "b"}, [torch.arange(4, dtype=torch.float32)])
    for source, want in ((b, torch.arange(4, dtype=torch.float32)), (a, torch.zeros(4))):
        meta, tensors = c.load_state(timeout_s=10.0, peer=source.peer_id)
        assert meta["who"] == ("b" if source is b else "a")
        assert len(tensors) == 1 and torch.equal(tensors[0], want)
    meta, tensors = c.load_state(timeout_s=10.0, peer=b.peer_id, min_step=9)  # b's state is older: metadata only
    assert meta["who"] == "b" and tensors == []
    with pytest.raises(AveragingError):
        c.load_state(timeout_s=3.0, peer=c.peer_id)  # c serves nothing
