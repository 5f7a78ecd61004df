"""Outer optimizer math against hand-computed references, and NoLoCo's seeded pairing."""

from __future__ import annotations

import torch

from training.config import TrainingConfig
from training.outer import (
    DilocoOuter,
    NolocoOuter,
    StreamingOuter,
    balanced_fragments,
    make_outer,
    noloco_group_bits,
    noloco_lead_fraction,
    noloco_num_groups,
)


def params(*values: list[float]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.tensor(v)) for v in values]


def test_diloco_two_rounds_match_hand_computed_nesterov() -> None:
    cfg = TrainingConfig(outer_lr=0.7, outer_momentum=0.9, inner_steps=3)
    ps = params([1.0, 2.0])
    outer = make_outer(ps, cfg)
    assert isinstance(outer, DilocoOuter) and outer.due(3) == [0] and outer.due(2) == []
    with torch.no_grad():
        ps[0].copy_(torch.tensor([0.5, 2.5]))
    assert torch.allclose(outer.outgoing(0)[0], torch.tensor([0.5, -0.5]))
    avg = [torch.tensor([0.2, -0.4])]  # the group mean of pseudo-gradients
    outer.incoming(0, avg)
    # buf = g; phi = phi - lr * (g + mu * buf) = [1, 2] - 0.7 * 1.9 * [0.2, -0.4]
    want1 = torch.tensor([1.0 - 0.7 * 1.9 * 0.2, 2.0 + 0.7 * 1.9 * 0.4])
    assert torch.allclose(outer.slow[0], want1) and torch.allclose(ps[0].detach(), want1)
    g2 = torch.tensor([0.1, 0.1])
    outer.incoming(0, [g2])
    buf2 = 0.9 * torch.tensor([0.2, -0.4]) + g2
    want2 = want1 - 0.7 * (g2 + 0.9 * buf2)
    assert torch.allclose(outer.slow[0], want2)


def test_diloco_matches_torch_sgd_nesterov() -> None:
    cfg = TrainingConfig()
    ps = params([0.3, -1.2, 4.0])
    outer = make_outer(ps, cfg)
    ref = torch.nn.Parameter(torch.tensor([0.3, -1.2, 4.0]))
    sgd = torch.optim.SGD([ref], lr=cfg.outer_lr, momentum=cfg.outer_momentum, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        g = torch.randn(3, generator=gen)
        outer.incoming(0, [g])
        ref.grad = g.clone()
        sgd.step()
    assert torch.allclose(outer.slow[0], ref.detach(), atol=1e-6)


def test_diloco_without_group_applies_local_pseudo_gradient() -> None:
    ps = params([1.0])
    outer = make_outer(ps, TrainingConfig(outer_momentum=0.0, outer_lr=1.0))
    with torch.no_grad():
        ps[0].fill_(0.25)
    outer.incoming(0, None)
    assert torch.allclose(outer.slow[0], torch.tensor([0.25]))


def test_noloco_update_matches_hand_computed() -> None:
    cfg = TrainingConfig(outer_optimizer="noloco", noloco_lr=0.7, noloco_momentum=0.5, noloco_pull=0.5)
    ps = params([1.0, 1.0])
    outer = make_outer(ps, cfg)
    assert isinstance(outer, NolocoOuter)
    with torch.no_grad():
        ps[0].copy_(torch.tensor([0.8, 1.1]))
    sent = outer.outgoing(0)
    assert torch.allclose(sent[0], torch.tensor([0.2, -0.1])) and torch.allclose(sent[1], torch.tensor([1.0, 1.0]))
    a, phi_bar = torch.tensor([0.3, 0.0]), torch.tensor([2.0, 0.0])  # pair means
    outer.incoming(0, [a, phi_bar])
    # m = a; phi = phi - 0.7 * (a + 0.5 * m) - 0.5 * (phi - phi_bar)
    want = torch.tensor([1.0, 1.0]) - 0.7 * 1.5 * a - 0.5 * (torch.tensor([1.0, 1.0]) - phi_bar)
    assert torch.allclose(outer.slow[0], want) and torch.allclose(ps[0].detach(), want)


def test_noloco_buckets_depend_only_on_the_peer_the_round_and_the_seed() -> None:
    peers = [f"peer-{i}" for i in range(12)]
    bits = {p: noloco_group_bits(5, peers, p, seed=3) for p in peers}
    # a view that lacks one peer, or holds a newcomer, leaves every other peer's group as it was
    for left in peers:
        view = [p for p in peers if p != left]
        assert all(noloco_group_bits(5, view, p, seed=3) == bits[p] for p in view)
    assert all(noloco_group_bits(5, [*peers, "newcomer"], p, seed=3) == bits[p] for p in peers)
    # 12 peers in groups of 2: 2 buckets (at least two groups' worth each on average), 2 round bits + 1 bucket bit
    assert {len(b) for b in bits.values()} == {3} and len({b[2:] for b in bits.values()}) == 2
    assert {b[:2] for b in bits.values()} == {"01"}  # round 5 % 4
    # a new round or another seed reshuffles the buckets
    assert any(noloco_group_bits(6, peers, p, seed=3)[2:] != bits[p][2:] for p in peers)
    assert any(noloco_group_bits(5, peers, p, seed=4) != bits[p] for p in peers)


def test_noloco_lead_delays_reorder_the_peers_every_round() -> None:
    cfg = TrainingConfig(outer_optimizer="noloco", matchmaking_time_s=2.0, seed=3, total_steps=100, inner_steps=10)
    outer = NolocoOuter(params([1.0]), cfg)
    peers = [f"rank-{i}" for i in range(4)]
    delays = {r: {p: outer.lead_delay_s(r, p) for p in peers} for r in range(12)}
    assert all(0.0 <= d < 2.0 for per in delays.values() for d in per.values())
    assert delays[3]["rank-1"] == 2.0 * noloco_lead_fraction(3, "rank-1", 3)  # the peer, the round, the seed alone
    assert noloco_lead_fraction(3, "rank-1", 4) != noloco_lead_fraction(3, "rank-1", 3)
    # peers that arrive together pair in the order of their declared starts: first two, last two
    pairings = set()
    for per in delays.values():
        order = sorted(peers, key=per.__getitem__)
        pairings.add(frozenset({frozenset(order[:2]), frozenset(order[2:])}))
    assert len(pairings) == 3  # every pairing of four peers occurs in 12 rounds
    assert DilocoOuter(params([1.0]), TrainingConfig(total_steps=100, inner_steps=10)).lead_delay_s(3, "a") is None


def test_noloco_bucket_count_is_a_coarse_power_of_two() -> None:
    assert [noloco_num_groups(n, 2) for n in (1, 2, 4, 6, 7, 8, 15, 16, 31, 32)] == [1, 1, 1, 1, 1, 2, 2, 4, 4, 8]
    assert noloco_num_groups(6, 3) == 1 and noloco_num_groups(12, 3) == 2
    # six peers (the churn case): one bucket whatever the view, so hivemind pairs whoever is there
    assert {noloco_num_groups(n, 2) for n in (5, 6, 7)} == {1}


def test_streaming_fragments_schedule_and_merge() -> None:
    cfg = TrainingConfig(outer_optimizer="streaming", inner_steps=8, num_fragments=4, merge_alpha=0.5, outer_lr=1.0,
                         outer_momentum=0.0)  # fmt: skip
    ps = params([1.0], [2.0], [3.0], [4.0], [5.0])
    outer = make_outer(ps, cfg)
    assert isinstance(outer, StreamingOuter)
    assert [outer.fragment(f) for f in range(4)] == [[0, 4], [1], [2], [3]]
    due = {s: outer.due(s) for s in range(1, 17) if outer.due(s)}
    assert due == {2: [0], 4: [1], 6: [2], 8: [3], 10: [0], 12: [1], 14: [2], 16: [3]}
    with torch.no_grad():
        ps[1].fill_(1.0)  # theta moved by -1
    sent = outer.outgoing(1)
    with torch.no_grad():
        ps[1].fill_(0.5)  # kept training during the overlap
    outer.incoming(1, [sent[0] * 3])  # group mean pseudo-gradient 3.0
    assert torch.allclose(outer.slow[1], torch.tensor([-1.0]))  # 2 - 1.0 * 3
    assert torch.allclose(ps[1].detach(), torch.tensor([0.5 * 0.5 + 0.5 * -1.0]))
    assert torch.allclose(ps[0].detach(), torch.tensor([1.0]))  # other fragments untouched


def test_balanced_fragments_partition_evenly() -> None:
    sizes = [16384, 4096, 4096, 11264, 11264, 64, 16384, 11264, 4096, 64]
    parts = balanced_fragments(sizes, 4)
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(sizes) and max(loads) <= sum(sizes) / 4 * 1.25


def test_state_round_trip() -> None:
    ps = params([1.0, 2.0])
    outer = make_outer(ps, TrainingConfig())
    outer.incoming(0, [torch.tensor([0.1, 0.2])])
    other = make_outer(params([0.0, 0.0]), TrainingConfig())
    other.load_state_tensors([t.clone() for t in outer.state_tensors()])
    assert all(torch.equal(a, b) for a, b in zip(other.state_tensors(), outer.state_tensors(), strict=True))
