"""One training peer: inner steps, exchanges through an averager, outer steps, state sharing, checkpoints.

`TrainingPeer.run` is blocking and meant for a worker thread or process. The averager is anything with the
`HivemindAverager` methods `step`, `share_state`, `load_state` and `donors` and its `peer_id` (None trains alone).
Exchanged tensors are flattened into one fixed-length fp32 vector per exchange (zero-padded to the largest
fragment), so one averager serves every fragment. Where the group must agree on the outer state (DiLoCo), a peer
whose state differed from the group's at the start of a round takes a member's state after it
(`training.consensus`). What other peers claim (their round, their state) is checked against the group: a state is
taken only from donors making the majority's claim, and its digest is recomputed. This module knows nothing about
gossip or HTTP.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from comms.averaging import AveragingError, AveragingResult, AveragingSettings
from comms.codecs import TensorCodec, make_codec
from training.checkpoint import load_latest, save_checkpoint
from training.config import TrainingConfig
from training.consensus import (
    StateClaim,
    group_round,
    majority_donors,
    reference_holders,
    state_claim,
    state_digest,
)
from training.data import TokenData
from training.inner import InnerLoop
from training.model import load_train_model
from training.outer import OuterOptimizer, make_outer
from training.pace import RoundDeadline

log = logging.getLogger(__name__)
HISTORY_LEN = 20_000
CLAIM_POLL_S = 0.1  # between asks of a donor that has not shared the state wanted yet


class Averager(Protocol):
    peer_id: str

    def step(
        self,
        tensors: list[torch.Tensor],
        *,
        round_index: int,
        timeout_s: float,
        weight: float = 1.0,
        group_bits: str | None = None,
        digest: str = "",
        pace_s: float | None = None,
        lead_delay_s: float | None = None,
    ) -> AveragingResult: ...

    def share_state(self, metadata: dict[str, Any], tensors: list[torch.Tensor]) -> None: ...

    def load_state(
        self, timeout_s: float, peer: str, min_step: int = 0, metadata_only: bool = False
    ) -> tuple[dict[str, Any], list[torch.Tensor]]: ...

    def donors(self, timeout_s: float) -> list[str]: ...


@dataclass
class PeerStatus:
    """What the node gossips and exports: round, step, last losses and exchange outcomes."""

    round_index: int = 0
    step: int = 0
    loss: float = float("nan")
    eval_loss: float = float("nan")
    exchanges_ok: int = 0
    exchanges_failed: int = 0
    rounds_alone: int = 0  # rounds without an exchange: too few training peers known for a group
    rounds_cut: int = 0  # rounds this peer ended at the group's deadline with fewer than H steps (training.pace)
    resyncs: int = 0  # rounds after which this peer took a group member's state (see training.consensus)
    states_refused: int = 0  # states downloaded from a peer and refused (digest, shapes, NaN, claim changed)
    # bounded: a node may train for days
    history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))
    eval_history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=HISTORY_LEN))
    last_group: list[str] = field(default_factory=list)


def averaging_settings(
    cfg: TrainingConfig,
    *,
    prefix: str,
    initial_peers: tuple[str, ...] = (),
    host_maddrs: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",),
    bandwidth_mbps: float | None = None,
) -> AveragingSettings:
    """The averager settings a training config implies (codec, group sizes, timeouts)."""
    return AveragingSettings(
        prefix=prefix,
        initial_peers=tuple(initial_peers),
        host_maddrs=tuple(host_maddrs),
        codec=cfg.codec,
        codec_block_size=cfg.codec_block_size,
        target_group_size=cfg.target_group_size,
        min_group_size=cfg.min_group_size,
        matchmaking_time_s=cfg.matchmaking_time_s,
        allreduce_timeout_s=cfg.allreduce_timeout_s,
        request_timeout_s=cfg.request_timeout_s,
        bandwidth_mbps=bandwidth_mbps,
    )


class CodecFeedback:
    """Error feedback on what a peer sends (`training.error_feedback`): the part of a fragment's vector that the
    codec lost last time is added to the next one, so quantisation error is delayed rather than dropped. The
    averager encodes the same flat vector with the same blocks, so the local round trip is the loss it sees."""

    def __init__(self, codec: TensorCodec) -> None:
        self.codec = codec
        self._residual: dict[int, torch.Tensor] = {}

    def add(self, fragment: int, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vector to send and the residual it would leave, kept by `keep` once the group took it."""
        prev = self._residual.get(fragment)
        target = flat if prev is None else flat + prev
        return target, target - self.codec.decode(self.codec.encode(target))

    def keep(self, fragment: int, residual: torch.Tensor) -> None:
        self._residual[fragment] = residual


def exchange_length(outer: OuterOptimizer) -> int:
    """Length of the flat vector every exchange of this outer optimizer uses."""
    return max(sum(math.prod(s) for s in outer.outgoing_shapes(f)) for f in range(outer.num_fragments))


def flatten(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    return torch.nn.functional.pad(flat, (0, length - flat.numel()))


def unflatten(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for t in like:
        out.append(flat[offset : offset + t.numel()].reshape(t.shape).clone())
        offset += t.numel()
    return out


class TrainingPeer:
    """A peer's whole training state. `cfg` says what to train; `peer_id` names this peer; `peers` (a callable
    returning the current training peers' ids) is needed by NoLoCo's pairing, and lets a peer alone skip the
    exchange (it would wait `round_timeout_s` for a group every round)."""

    def __init__(
        self,
        cfg: TrainingConfig,
        data: TokenData,
        *,
        peer_id: str,
        shard_index: int,
        num_shards: int,
        averager: Averager | None = None,
        peers: Callable[[], list[str]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.peer_id = peer_id
        self.averager = averager
        self.peers = peers or (lambda: [peer_id])
        # with a `peers` view, a round in which it holds too few peers for a group applies the local update at once
        # instead of waiting `round_timeout_s` for a group that cannot form
        self._peers_known = peers is not None
        built = load_train_model(cfg.model)
        self.model_hash = built.model_hash
        self.inner = InnerLoop(built.model, cfg, ignored_label=built.ignored_label())
        self.outer = make_outer(self.inner.params, cfg)
        self.data = data
        self.shard = data.shard(shard_index, num_shards)
        self.shard_seed = cfg.seed * 7919 + shard_index
        self.eval_set = data.eval_batches(cfg.batch_size, cfg.eval_batches)
        self.status = PeerStatus()
        # Co-scheduling: when set, each inner step runs as micro-batches of `micro_batch` rows, each executed by
        # `micro_gate` (which runs it once the node's serving leaves room).
        self.micro_gate: Callable[[Callable[[], None]], None] | None = None
        self.micro_batch = cfg.batch_size
        # When set, runs each inner step in place of `inner` (another process stepping the same weights and
        # optimizer state, in shared memory) and returns its loss.
        self.inner_step: Callable[[torch.Tensor], float] | None = None
        # When set, the work between inner steps (the outer step and its outgoing delta, the state shared with
        # joiners and its digest, checkpoints, each eval batch) runs as pieces through it, once the node's serving
        # leaves room, like the micro-steps; `inner_eval`, when set, evaluates the live weights in place of `inner`
        # (in the process that runs the inner steps).
        self.side_gate: Callable[[Callable[[], None]], None] | None = None
        self.inner_eval: Callable[[list[torch.Tensor]], float] | None = None
        # rounds end at the group's deadline; not for exchanges that overlap inner steps (streaming), which end
        # mid-round by design
        self.deadline = RoundDeadline(cfg.inner_steps, clock)
        self.exchange_len = exchange_length(self.outer)
        self._feedback = CodecFeedback(make_codec(cfg.codec, cfg.codec_block_size)) if cfg.error_feedback else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exchange")
        # Config and tokenizer files in every checkpoint: the serving engine loads the directory as it is.
        self.checkpoint_files: dict[str, bytes] = built.files()
        self._group_round: int | None = None  # the group's round when it is not this peer's (see _realign)
        self._reference: list[str] = []  # the members whose state to take after this round (any of them)
        self._members: dict[str, tuple[int, str]] = {}  # what the last round's members gathered

    # state: checkpoints and late join -------------------------------------------------------------------
    def state_tensors(self) -> list[torch.Tensor]:
        return [p.detach() for p in self.inner.params] + self.outer.state_tensors()

    def _load_state_tensors(self, tensors: list[torch.Tensor]) -> None:
        n = len(self.inner.params)
        self.outer.load_state_tensors(tensors[n:])
        with torch.no_grad():
            for p, t in zip(self.inner.params, tensors[:n], strict=True):
                p.copy_(t)

    def start_from(self, weights: dict[str, torch.Tensor]) -> None:
        """Start from these weights (theta = phi = weights, zero outer momentum, fresh AdamW state)."""
        tensors = [weights[name].to(torch.float32) for name, _ in self.inner.model.named_parameters()]
        self._load_state_tensors([*tensors, *tensors, *(torch.zeros_like(t) for t in tensors)])

    def resume_or_join(self, join_timeout_s: float | None = 30.0) -> str:
        """Resume from the newest valid checkpoint, else (unless `join_timeout_s` is None) download the state
        a peer shares; returns what happened."""
        if self.cfg.checkpoint_dir is not None:
            ckpt = load_latest(self.cfg.checkpoint_dir)
            if ckpt is not None:
                self.outer.load_state_tensors(ckpt.outer)  # also sets theta <- phi; the live weights follow
                self.inner.model.load_state_dict(ckpt.model)
                self.inner.optimizer.load_state_dict(ckpt.inner_optimizer["optimizer"])
                self.inner.scheduler.load_state_dict(ckpt.inner_optimizer["scheduler"])
                self._set_position(ckpt.round_index, ckpt.step)
                return f"resumed from {ckpt.path}"
        if self.averager is not None and join_timeout_s is not None:
            deadline = time.monotonic() + join_timeout_s
            try:
                donors = self.averager.donors(timeout_s=join_timeout_s)
            except AveragingError as err:
                return f"started fresh ({err})"
            loaded = self._load_agreed_state(donors, min_step=0, deadline=deadline, fits=lambda c: True)
            if loaded is None:
                return f"started fresh (no state that most of {len(donors)} donor(s) agree on)"
            meta, tensors = loaded
            self._load_state_tensors(tensors)
            self._set_position(int(meta["round"]), int(meta["step"]))
            return f"joined at step {self.status.step} with a peer's state"
        return "started fresh"

    def _state_problem(self, meta: dict[str, Any], tensors: list[torch.Tensor]) -> str | None:
        """Why a state downloaded from a peer must not be used (None when it is fine)."""
        if meta.get("model_hash") != self.model_hash:
            return "it is for another model"
        mine = self.state_tensors()
        if len(tensors) != len(mine) or any(t.shape != m.shape for t, m in zip(tensors, mine, strict=True)):
            return "tensor shapes differ from this model's"
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            return "it holds NaN/Inf"
        if state_claim(meta, self.cfg.inner_steps, self.model_hash) is None:
            return "round/step/digest are missing or inconsistent"
        if meta["step"] > self.cfg.total_steps:  # taking it would end this peer's run
            return f"its step {meta['step']} is past this run's total_steps ({self.cfg.total_steps})"
        if state_digest(tensors[len(self.inner.params) :]) != meta["digest"]:
            return "its outer state does not match the digest it claims"
        return None

    def _collect_claims(self, candidates: list[str], min_step: int, deadline: float) -> dict[str, StateClaim]:
        """Ask each candidate donor (metadata only) what state it shares, until each shares one at `min_step` or
        later, a strict majority of them agree, or `deadline`. A malformed claim or a dead donor drops out."""
        claims: dict[str, StateClaim] = {}
        if self.averager is None:
            return claims
        pending = list(dict.fromkeys(candidates))
        total = len(pending)
        while pending and time.monotonic() < deadline:
            for peer in list(pending):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    timeout_s = min(left, self.cfg.request_timeout_s)
                    meta, _ = self.averager.load_state(timeout_s, peer=peer, min_step=min_step, metadata_only=True)
                except AveragingError:
                    pending.remove(peer)
                    continue
                claim = state_claim(meta, self.cfg.inner_steps, self.model_hash)
                if claim is None or claim.step >= min_step:
                    pending.remove(peer)
                if claim is not None and claim.step >= min_step:
                    claims[peer] = claim
            agreed = majority_donors(claims)
            if 2 * len(agreed) > total:
                break
            if pending:
                time.sleep(CLAIM_POLL_S)
        return claims

    def _load_agreed_state(
        self, candidates: list[str], *, min_step: int, deadline: float, fits: Callable[[StateClaim], bool]
    ) -> tuple[dict[str, Any], list[torch.Tensor]] | None:
        """Download the state most `candidates` claim (among claims `fits` accepts) from one of them, checked:
        its recomputed digest and its claim must be what that donor's metadata said. None if no donor gave it."""
        if self.averager is None:
            return None
        claims = {p: c for p, c in self._collect_claims(candidates, min_step, deadline).items() if fits(c)}
        for peer in majority_donors(claims):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                meta, tensors = self.averager.load_state(timeout_s=left, peer=peer, min_step=min_step)
            except AveragingError as err:
                log.warning("could not download %s's state: %s", peer, err)
                continue
            problem = self._state_problem(meta, tensors)
            if problem is None and state_claim(meta, self.cfg.inner_steps, self.model_hash) != claims[peer]:
                problem = "its state is not the one its metadata claimed"
            if problem is None:
                return meta, tensors
            self.status.states_refused += 1
            log.warning("refused %s's state: %s", peer, problem)
        return None

    def _set_position(self, round_index: int, step: int) -> None:
        self.status.round_index, self.status.step = round_index, step
        self.inner.set_step(step)

    def checkpoint(self) -> None:
        if self.cfg.checkpoint_dir is None:
            return
        save_checkpoint(
            self.cfg.checkpoint_dir,
            round_index=self.status.round_index,
            step=self.status.step,
            model={k: v.detach() for k, v in self.inner.model.state_dict().items()},
            outer=self.outer.state_tensors(),
            inner_optimizer={
                "optimizer": self.inner.optimizer.state_dict(),
                "scheduler": self.inner.scheduler.state_dict(),
            },
            extra={"peer_id": self.peer_id, "model_hash": self.model_hash},
            files=self.checkpoint_files,
            keep=self.cfg.keep_checkpoints,
        )

    def share_state(self) -> None:
        if self.averager is None:
            return
        meta = {"round": self.status.round_index, "step": self.status.step, "model_hash": self.model_hash}
        meta["digest"] = state_digest(self.outer.state_tensors())
        try:
            self.averager.share_state(meta, self.state_tensors())
        except AveragingError as err:  # the averaging process died (it is restarted before the next exchange)
            log.warning("round %d: state not shared (%s); shared again next round", self.status.round_index, err)

    # the loop ------------------------------------------------------------------------------------------
    def _exchange(
        self, f: int, round_index: int, outgoing: list[torch.Tensor], digest: str = "", weight: float = 1.0
    ) -> list[torch.Tensor] | None:
        """Average `outgoing` with a group, as `weight` (the share of the round's steps this peer did); `digest` (of
        the outer state this round starts from, or "") is compared with the members' to pick a state to take after
        the round. The members' paces set the next round's deadline."""
        self._reference = []
        if self.averager is None:
            return None
        peers = self.peers()
        if self._peers_known and len({*peers, self.peer_id}) < self.cfg.min_group_size:
            if self.status.rounds_alone == 0:
                log.info("round %d: no other training peer known; applying the local update", round_index)
            self.status.rounds_alone += 1
            return None
        bits = self.outer.group_bits(round_index, peers, self.peer_id)
        if bits is None and self.outer.num_fragments > 1:
            bits = f"{f:0{max(1, (self.outer.num_fragments - 1).bit_length())}b}"
        sent = flatten(outgoing, self.exchange_len)
        if self._feedback is not None:
            sent, residual = self._feedback.add(f, sent)
        try:
            result = self.averager.step(
                [sent],
                round_index=round_index,
                timeout_s=self.cfg.round_timeout_s,
                weight=weight,
                group_bits=bits,
                digest=digest,
                pace_s=self.deadline.pace_s(),
                lead_delay_s=self.outer.lead_delay_s(round_index, self.peer_id),
            )
        except AveragingError as err:
            log.warning("round %d fragment %d: no average (%s); applying the local update", round_index, f, err)
            self.status.exchanges_failed += 1
            return None
        self.status.exchanges_ok += 1
        if self._feedback is not None:  # only what the group took in leaves a residual
            self._feedback.keep(f, residual)
        self.status.last_group = list(result.peers)
        if self.outer.overlap_steps == 0:
            self.deadline.learn(result.paces)
        self._members = dict(result.members)
        agreed = group_round(self.averager.peer_id, round_index, result.members)
        self._group_round = agreed if agreed != round_index else None
        if digest:
            self._reference = reference_holders(self.averager.peer_id, digest, round_index, result.members)
        return unflatten(result.tensors[0], outgoing)

    def next_batch(self) -> torch.Tensor:
        return self.data.batch(self.shard, self.cfg.batch_size, self.shard_seed, self.status.step)

    def _realign(self) -> None:
        """The group's round (the lower median of its members' claims) is not this peer's: take the state the
        members at the group's round share after it (the one most of them claim, digest checked). A peer behind
        catches up; a peer one round ahead of its group (it started earlier) steps back to the group's state, so
        that members at different rounds do not stay apart. Never more than one round back, and a claim of a far
        later round is no majority's, so no peer drags the others anywhere."""
        target, self._group_round = self._group_round, None
        me = self.averager.peer_id if self.averager is not None else self.peer_id
        mine = self.status.step // self.cfg.inner_steps
        if target is None or target < mine - 1:
            return
        candidates = [p for p, (r, _) in self._members.items() if r == target and p != me]
        loaded = self._load_agreed_state(
            candidates,
            min_step=target * self.cfg.inner_steps,
            deadline=time.monotonic() + self.cfg.round_timeout_s,
            fits=lambda c: target <= c.round_index <= target + 1,
        )
        if loaded is None:
            log.warning("at round %d, the group at %d; no member's state could be taken", mine, target)
            return
        self._load_state_tensors(loaded[1])
        self._set_position(int(loaded[0]["round"]), int(loaded[0]["step"]))
        self.status.resyncs += 1

    def _take_reference_state(self) -> None:
        """This peer started the round from another outer state than the group's reference: take the state the
        reference holders share after the same round (right after their outer step; wait for that), from one
        making the claim most of them make, digest checked."""
        holders, self._reference = self._reference, []
        if self.averager is None or not holders:
            return
        step, h = self.status.step, self.cfg.inner_steps
        loaded = self._load_agreed_state(
            holders,
            min_step=step,
            deadline=time.monotonic() + self.cfg.round_timeout_s,
            fits=lambda c: c.round_index <= step // h + 1,
        )
        if loaded is None:
            log.warning("state differs from the group's; no state of %s could be taken", ", ".join(holders))
            return
        meta, tensors = loaded
        self._load_state_tensors(tensors)
        self._set_position(int(meta["round"]), int(meta["step"]))
        self.status.resyncs += 1

    def _gated(self, piece: Callable[[], Any]) -> Any:
        """Run `piece` through `side_gate` (directly without one); returns what it returned."""
        if self.side_gate is None:
            return piece()
        out: list[Any] = []
        self.side_gate(lambda: out.append(piece()))
        return out[0]

    def _evaluate_live(self) -> float:
        """Mean eval loss of the live weights: in the inner steps' process, or one gated piece per eval batch (the
        same mean, summed in the same order)."""
        if self.inner_eval is not None:
            return self.inner_eval(self.eval_set)
        if self.side_gate is None:
            return self.inner.evaluate(self.eval_set)
        losses = [self._gated(lambda b=batch: self.inner.evaluate([b])) for batch in self.eval_set]
        return sum(losses) / len(losses)

    def evaluate(self) -> float:
        loss = self._evaluate_live()
        self.status.eval_loss = loss
        self.status.eval_history.append((self.status.step, loss))
        return loss

    def evaluate_global(self) -> float:
        """Eval loss of the outer (global) weights phi, the model the swarm agrees on; the live weights are
        restored afterwards. For DiLoCo right after a round phi equals the live weights."""
        live: list[torch.Tensor] = []

        @torch.no_grad()
        def to_slow() -> None:
            live.extend(p.detach().clone() for p in self.inner.params)
            for p, s in zip(self.inner.params, self.outer.slow, strict=True):
                p.copy_(s)

        @torch.no_grad()
        def back() -> None:
            for p, t in zip(self.inner.params, live, strict=True):
                p.copy_(t)

        self._gated(to_slow)
        try:
            return self._evaluate_live()
        finally:
            self._gated(back)

    def run(self, num_steps: int, *, eval_every: int = 0, should_stop: Callable[[], bool] | None = None) -> None:
        """Train `num_steps` more inner steps, or fewer where a round this peer could not finish by the group's
        deadline ended early (`_end_round_early`: the step moves on to the round's end), exchanging as the outer
        optimizer says."""
        pending: dict[int, tuple[int, Future]] = {}
        h = self.cfg.inner_steps
        st = self.status
        end = st.step + num_steps
        for _ in range(num_steps):
            if st.step >= end or (should_stop is not None and should_stop()):
                break
            if self.deadline.started is None:
                self.deadline.start_round()
            before = st.step
            batch = self.next_batch()
            if self.inner_step is not None:
                loss = self.inner_step(batch)
            elif self.micro_gate is None:
                loss = self.inner.step(batch)
            else:
                loss = self.inner.step_in_micro_batches(batch, self.micro_batch, self.micro_gate)
            st.step += 1
            st.loss = loss
            st.history.append((st.step, loss))
            self.deadline.step_done()
            weight = 1.0
            if self.outer.overlap_steps == 0 and self.deadline.overdue(st.step % h):
                weight = self._end_round_early()
            for f, (ready_at, fut) in list(pending.items()):
                if st.step >= ready_at:
                    averaged = fut.result()
                    self._gated(lambda f=f, averaged=averaged: self.outer.incoming(f, averaged))
                    del pending[f]
            for f in self.outer.due(st.step):
                outgoing = self._gated(lambda f=f: self.outer.outgoing(f))
                if self.outer.overlap_steps == 0:
                    agrees = self.outer.group_agrees
                    digest = self._gated(lambda: state_digest(self.outer.state_tensors())) if agrees else ""
                    averaged = self._exchange(f, st.step // h, outgoing, digest, weight)  # waits on the network
                    self._gated(lambda f=f, averaged=averaged: self.outer.incoming(f, averaged))  # the outer step
                    self.deadline.start_round()
                    if self._group_round is not None:
                        self._realign()
                    elif self._reference:
                        self._take_reference_state()
                else:
                    fut = self._pool.submit(self._exchange, f, st.step // h, outgoing)
                    pending[f] = (st.step + self.outer.overlap_steps, fut)
            paused = self.deadline.clock()  # sharing, checkpoints and evaluations are no training: off the pace
            if st.step % h == 0:
                st.round_index = st.step // h
                self._gated(self.share_state)
                self._gated(self.checkpoint)
            if eval_every and st.step // eval_every > before // eval_every:  # a cut round may skip the multiple
                self.evaluate()
            self.deadline.exclude(self.deadline.clock() - paused)
        for f, (_, fut) in pending.items():
            averaged = fut.result()
            self._gated(lambda f=f, averaged=averaged: self.outer.incoming(f, averaged))

    def _end_round_early(self) -> float:
        """The group's deadline passed mid-round: end the round at the steps done. The step moves on to the round's
        end, so that the learning-rate schedule, the data and the round number stay the group's; returns the share
        of the round's steps done, this peer's weight in the average. Not past `total_steps`."""
        st, h = self.status, self.cfg.inner_steps
        done = st.step % h
        boundary = st.step - done + h
        if boundary > self.cfg.total_steps:
            return 1.0
        log.info("round %d: the group's deadline passed after %d of %d steps; averaging them", st.step // h, done, h)
        st.step = boundary
        self.inner.set_step(boundary)
        st.rounds_cut += 1
        return done / h

    def close(self) -> None:
        self._pool.shutdown(wait=True)
