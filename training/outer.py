"""Outer optimizers: DiLoCo, NoLoCo and streaming DiLoCo behind one interface.

An outer optimizer holds the slow weights (phi) and its momentum; the inner loop moves the live parameters
(theta). After inner step `step` the trainer asks `due(step)` which fragments to exchange, sends
`outgoing(f)` to the averager, keeps training `overlap_steps` steps, then hands the group average (or None
when no group formed) to `incoming(f, avg)`. This module knows nothing about networks: it is tensor math.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import torch

from training.config import TrainingConfig


class OuterOptimizer(ABC):
    """Contract: `outgoing(f)` returns tensors whose *group mean* is what `incoming(f, mean)` needs; `incoming`
    with None means "no peer answered" and must leave training consistent (apply the local contribution)."""

    name: str
    overlap_steps: int = 0
    # Every member of a completed round ends it with the same outer state (so a peer whose state differs from
    # the group's takes a member's, training.consensus). NoLoCo pairs never agree; streaming DiLoCo would, but
    # its fragments are exchanged mid-round, between the states peers share.
    group_agrees: bool = False

    def __init__(self, params: list[torch.nn.Parameter], cfg: TrainingConfig) -> None:
        self.params = list(params)
        self.cfg = cfg
        self.slow = [p.detach().clone().float() for p in self.params]
        self.momentum = [torch.zeros_like(s) for s in self.slow]

    @property
    def num_fragments(self) -> int:
        return 1

    def fragment(self, f: int) -> list[int]:
        """Indices (into params) of fragment f."""
        return list(range(len(self.params)))

    def due(self, step: int) -> list[int]:
        """Fragments whose exchange starts after inner step `step` (1-based)."""
        return [0] if step % self.cfg.inner_steps == 0 else []

    def group_bits(self, round_index: int, peers: list[str], me: str) -> str | None:
        """Group key bits that choose who averages with whom this round (None: everyone together)."""
        return None

    def lead_delay_s(self, round_index: int, me: str) -> float | None:
        """Seconds this peer adds to the start it declares in matchmaking this round (None: none added)."""
        return None

    def outgoing_shapes(self, f: int) -> list[torch.Size]:
        return [self.slow[i].shape for i in self.fragment(f)]

    def pseudo_gradient(self, f: int) -> list[torch.Tensor]:
        return [self.slow[i] - self.params[i].detach().float() for i in self.fragment(f)]

    @abstractmethod
    def outgoing(self, f: int) -> list[torch.Tensor]: ...

    @abstractmethod
    def incoming(self, f: int, averaged: list[torch.Tensor] | None) -> None: ...

    def _nesterov(self, i: int, grad: torch.Tensor, lr: float, momentum: float) -> None:
        """torch.optim.SGD(nesterov=True) on slow weight i: buf = mu*buf + g; phi -= lr*(g + mu*buf)."""
        buf = self.momentum[i]
        buf.mul_(momentum).add_(grad)
        self.slow[i].sub_(grad.add(buf, alpha=momentum), alpha=lr)

    def state_tensors(self) -> list[torch.Tensor]:
        """Slow weights then momentum: what a late joiner downloads and a checkpoint stores."""
        return [*self.slow, *self.momentum]

    def load_state_tensors(self, tensors: list[torch.Tensor]) -> None:
        n = len(self.slow)
        if len(tensors) != 2 * n or any(
            t.shape != s.shape for t, s in zip(tensors, self.slow + self.slow, strict=True)
        ):
            raise ValueError("outer optimizer state does not match this model's shapes")
        for dst, src in zip(self.slow + self.momentum, tensors, strict=True):
            dst.copy_(src)
        with torch.no_grad():
            for p, s in zip(self.params, self.slow, strict=True):
                p.copy_(s)


class DilocoOuter(OuterOptimizer):
    """DiLoCo: every H inner steps, average the pseudo-gradient over the group; Nesterov step on phi;
    theta <- phi."""

    name = "diloco"
    group_agrees = True

    def outgoing(self, f: int) -> list[torch.Tensor]:
        return self.pseudo_gradient(f)

    def incoming(self, f: int, averaged: list[torch.Tensor] | None) -> None:
        grads = averaged if averaged is not None else self.pseudo_gradient(f)
        with torch.no_grad():
            for i, g in zip(self.fragment(f), grads, strict=True):
                self._nesterov(i, g, self.cfg.outer_lr, self.cfg.outer_momentum)
                self.params[i].copy_(self.slow[i])


class NolocoOuter(OuterOptimizer):
    """NoLoCo: no all-reduce. Each round a peer hashes itself into a bucket (`noloco_group_bits`) where it
    averages pseudo-gradients and slow weights with a group of `target_group_size` (hivemind forms the groups
    among whoever is in the bucket); then, with a the pair's mean pseudo-gradient and phi_bar the
    pair's mean slow weights: m <- beta*m + a; phi <- phi - alpha*(a + beta*m) - gamma*(phi - phi_bar)."""

    name = "noloco"

    def outgoing(self, f: int) -> list[torch.Tensor]:
        return [*self.pseudo_gradient(f), *(self.slow[i].clone() for i in self.fragment(f))]

    def outgoing_shapes(self, f: int) -> list[torch.Size]:
        return super().outgoing_shapes(f) * 2

    def group_bits(self, round_index: int, peers: list[str], me: str) -> str | None:
        return noloco_group_bits(round_index, peers, me, self.cfg.seed, self.cfg.target_group_size)

    def lead_delay_s(self, round_index: int, me: str) -> float | None:
        """A delay drawn from (seed, round, peer id) in [0, matchmaking period): within a bucket hivemind groups a
        peer with a leader that declared an earlier start, so without it the peers' arrival order, much the same
        every round, makes the same pairs every round, where NoLoCo needs a new partner each round."""
        return noloco_lead_fraction(round_index, me, self.cfg.seed) * self.cfg.matchmaking_time_s

    def incoming(self, f: int, averaged: list[torch.Tensor] | None) -> None:
        idx = self.fragment(f)
        if averaged is None:
            grads, mean_slow = self.pseudo_gradient(f), [self.slow[i].clone() for i in idx]
        else:
            grads, mean_slow = averaged[: len(idx)], averaged[len(idx) :]
        cfg = self.cfg
        with torch.no_grad():
            for i, g, bar in zip(idx, grads, mean_slow, strict=True):
                pull = (self.slow[i] - bar).mul_(cfg.noloco_pull)
                self._nesterov(i, g, cfg.noloco_lr, cfg.noloco_momentum)
                self.slow[i].sub_(pull)
                self.params[i].copy_(self.slow[i])


def noloco_num_groups(num_peers: int, group_size: int) -> int:
    """Hash buckets for `num_peers` peers in groups of `group_size`: the largest power of two that leaves at least
    two groups' worth of peers in each bucket on average (hivemind then pairs up whoever is in a bucket). A power of
    two, so that membership views of slightly different sizes almost always agree on it."""
    buckets = max(1, num_peers // (2 * group_size))
    return 1 << (buckets.bit_length() - 1)


def noloco_bucket(round_index: int, me: str, seed: int, num_groups: int) -> int:
    """This peer's bucket this round: a hash of (seed, round, peer id) alone, so no other peer's presence or
    absence (a peer that left, one that just joined, a view that lags) moves it."""
    digest = hashlib.sha256(f"noloco:{seed}:{round_index}:{me}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % num_groups


def noloco_lead_fraction(round_index: int, me: str, seed: int) -> float:
    """A number in [0, 1) drawn from (seed, round, peer id) alone, independent of the bucket's draw."""
    digest = hashlib.sha256(f"noloco-lead:{seed}:{round_index}:{me}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def noloco_group_bits(round_index: int, peers: list[str], me: str, seed: int = 0, group_size: int = 2) -> str:
    """Group key bits of `me` this round: 2 bits of round parity (keeps rounds apart) + the hashed bucket. The
    peer list only sizes the buckets (coarsely, see `noloco_num_groups`); it never decides who is with whom."""
    num_groups = noloco_num_groups(len(set(peers) | {me}), group_size)
    width = max(1, (num_groups - 1).bit_length())
    return f"{round_index % 4:02b}{noloco_bucket(round_index, me, seed, num_groups):0{width}b}"


def balanced_fragments(sizes: list[int], num: int) -> list[list[int]]:
    """Deal parameter indices, largest first, each to the currently lightest fragment: fragments of near-equal
    size whose layers interleave (the strided pattern of streaming DiLoCo, balanced so that the fixed-length
    exchange vector carries little padding). Deterministic: every peer derives the same partition."""
    loads = [0] * num
    parts: list[list[int]] = [[] for _ in range(num)]
    for i in sorted(range(len(sizes)), key=lambda k: (-sizes[k], k)):
        f = min(range(num), key=lambda k: (loads[k], k))
        parts[f].append(i)
        loads[f] += sizes[i]
    return [sorted(p) for p in parts]


class StreamingOuter(OuterOptimizer):
    """Streaming DiLoCo: P fragments (`balanced_fragments`), fragment p first synced after (p+1)*H/P inner
    steps then every H; the exchange overlaps `overlap_steps` inner steps; on arrival the outer Nesterov step
    updates phi_p and theta_p <- alpha*phi_p + (1-alpha)*theta_p (merge)."""

    name = "streaming"

    def __init__(self, params: list[torch.nn.Parameter], cfg: TrainingConfig) -> None:
        super().__init__(params, cfg)
        self.overlap_steps = cfg.overlap_steps
        self._num = min(cfg.num_fragments, len(self.params))
        self._fragments = balanced_fragments([p.numel() for p in self.params], self._num)
        self._pending: dict[int, list[torch.Tensor]] = {}

    @property
    def num_fragments(self) -> int:
        return self._num

    def fragment(self, f: int) -> list[int]:
        return self._fragments[f]

    def first_sync(self, f: int) -> int:
        return max(1, (f + 1) * self.cfg.inner_steps // self._num)

    def due(self, step: int) -> list[int]:
        h = self.cfg.inner_steps
        return [f for f in range(self._num) if step >= self.first_sync(f) and (step - self.first_sync(f)) % h == 0]

    def outgoing(self, f: int) -> list[torch.Tensor]:
        grads = self.pseudo_gradient(f)
        self._pending[f] = grads
        return grads

    def incoming(self, f: int, averaged: list[torch.Tensor] | None) -> None:
        local = self._pending.pop(f, None)
        grads = averaged if averaged is not None else local
        if grads is None:
            return
        alpha = self.cfg.merge_alpha
        with torch.no_grad():
            for i, g in zip(self.fragment(f), grads, strict=True):
                self._nesterov(i, g, self.cfg.outer_lr, self.cfg.outer_momentum)
                self.params[i].mul_(1.0 - alpha).add_(self.slow[i], alpha=alpha)


def make_outer(params: list[torch.nn.Parameter], cfg: TrainingConfig) -> OuterOptimizer:
    """The outer optimizer named by `cfg.outer_optimizer`."""
    kinds: dict[str, type[OuterOptimizer]] = {"diloco": DilocoOuter, "noloco": NolocoOuter, "streaming": StreamingOuter}
    return kinds[cfg.outer_optimizer](params, cfg)
