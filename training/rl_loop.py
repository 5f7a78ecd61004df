"""One node's RL rounds: sample own groups, share them, take peers' verified groups, one GRPO step, swap.

Per round r: derive I task refs from (swarm id, own peer id, r, slot) -> sample G completions each through the
sampler (the serving engine, at low priority) -> score locally -> publish the groups with reward variance ->
take peers' batches of the window (soft wait) -> re-score, select J -> GRPO step on the LoRA adapter -> the
sampler serves the new policy -> checkpoint. Rounds are per node; there is no global barrier.
Knows tasks, GRPO and the message; the sampler, publishing and peer list are handed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from protocols import encode
from protocols.rollouts import RolloutBatch, RolloutGroup, TaskRefRecord
from training.grpo import LoraPolicy, Sample, group_advantages
from training.rl_select import Candidate, RLCounters, RolloutGate, select_external, verify_batch
from training.rl_tasks import COMPACT_FORMAT, EVAL_BASE, TaskRef, TaskSet

log = logging.getLogger(__name__)


@dataclass
class Completion:
    """One sampled completion: its tokens (EOS excluded), text, whether it ended on EOS, sampled logprob sum."""

    token_ids: list[int]
    text: str
    finished: bool
    logprob: float


class Sampler(Protocol):
    """Generation for RL: the serving engine behind a small interface (the role adapts it)."""

    weights_version: int

    def sample(self, prompts: list[list[int]], n: int, seeds: list[int], temperature: float) -> list[list[Completion]]:
        """n completions of each prompt; seeds[i] seeds prompt i's samples."""

    def swap(self, version: int, deltas: dict[str, torch.Tensor]) -> None:
        """Serve base + deltas from the next step on."""


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:7], "big")


class RLWorker:
    """Runs rounds until `should_stop` or `cfg.max_rounds`; `counters` is what the node reports."""

    def __init__(self, cfg: Any, tasks: TaskSet, policy: LoraPolicy, sampler: Sampler, tokenizer: Any, *,
                 swarm_id: str, peer_id: str, model_hash: str, gate: RolloutGate, counters: RLCounters,
                 publish: Callable[[bytes], None], rl_peers: Callable[[], set[str]], checkpoint_dir: Path,
                 peer_rounds: Callable[[], list[int]] = list) -> None:  # fmt: skip
        self.cfg, self.tasks, self.policy, self.sampler, self.tok = cfg, tasks, policy, sampler, tokenizer
        self.swarm_id, self.peer_id, self.model_hash = swarm_id, peer_id, model_hash
        self.gate, self.counters, self.publish, self.rl_peers = gate, counters, publish, rl_peers
        self.peer_rounds = peer_rounds
        self.checkpoint_dir = checkpoint_dir
        self.eos_id = int(tokenizer.eos_token_id)
        self.round = policy.load(checkpoint_dir) or 0
        if self.round:
            sampler.swap(policy.version, policy.deltas())
            log.info("rl: resumed from %s at round %d", checkpoint_dir, self.round)
        self.tokens_generated = 0

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop() and (self.cfg.max_rounds is None or self.round < self.cfg.max_rounds):
            self.run_round(should_stop)

    def run_round(self, should_stop: Callable[[], bool]) -> dict[str, Any]:
        cfg, r = self.cfg, self.round
        start = time.monotonic()
        self.gate.set_round(r)
        refs = [self.tasks.derive(self.swarm_id, self.peer_id, r, slot) for slot in range(cfg.local_groups)]
        groups = self._sample_groups(refs, r)
        local_rewards = [x for _, _, rewards in groups for x in rewards]
        if cfg.external_groups > 0:
            self._publish(r, refs, groups)
        covered = frozenset(ref.dataset for ref, _, rewards in groups if max(rewards) > min(rewards))
        external = self._external(r, should_stop, covered) if cfg.external_groups > 0 else []
        samples = self._samples(refs, groups, external)
        stats = self.policy.step(samples)
        self.sampler.swap(self.policy.version, self.policy.deltas())
        self.policy.save(self.checkpoint_dir, r)
        mean = sum(local_rewards) / len(local_rewards)
        with self.counters.lock:
            self.counters.rounds = r + 1
            self.counters.mean_reward = mean
            self.counters.groups_used += len(external)
            for cand in external:
                self.counters.used_from[cand.peer_id] += 1
        report = {"round": r, "mean_reward": mean, "external_used": len(external), "tokens": self.tokens_generated,
                  "loss": stats["loss"], "learned": stats["learned"], "round_s": time.monotonic() - start}  # fmt: skip
        if cfg.eval_items and (r + 1) % cfg.eval_every == 0:
            report["eval_accuracy"] = self.evaluate(cfg.eval_items)
        self._log(report)
        self.round = self._next_round(r)
        return report

    def _next_round(self, r: int) -> int:
        """r + 1, or the median of the rl peers' announced rounds when that is ahead: a node that joined late or
        ran slow catches up, so its batches fall in the others' window. The median, so a minority of peers
        claiming absurd rounds moves nobody."""
        if self.cfg.external_groups == 0:  # nothing to share: no reason to skip rounds
            return r + 1
        rounds = sorted([r + 1, *self.peer_rounds()])
        ahead = max(r + 1, rounds[(len(rounds) - 1) // 2])
        if self.cfg.max_rounds is not None:  # a run of fixed length still runs its last round
            ahead = max(r + 1, min(ahead, self.cfg.max_rounds - 1))
        return ahead

    def _sample_groups(self, refs: list[TaskRef], r: int) -> list[tuple[TaskRef, list[Completion], list[float]]]:
        prompts = [self.encode(self.tasks.prompt(ref, COMPACT_FORMAT)) for ref in refs]
        seeds = [_seed(self.cfg.seed, self.peer_id, r, slot) for slot in range(len(refs))]
        while True:
            version = self.sampler.weights_version
            outs = self.sampler.sample(prompts, self.cfg.num_generations, seeds, self.cfg.temperature)
            if self.sampler.weights_version == version:  # none straddled a swap (another swapper, if any)
                break
        self.tokens_generated += sum(len(c.token_ids) for group in outs for c in group)
        return [(ref, comps, [self.tasks.score(ref, c.text) for c in comps])
                for ref, comps in zip(refs, outs, strict=True)]  # fmt: skip

    def _publish(
        self, r: int, refs: list[TaskRef], groups: list[tuple[TaskRef, list[Completion], list[float]]]
    ) -> None:
        shared = [
            RolloutGroup(
                task=TaskRefRecord(ref.dataset, ref.config_digest, ref.index),
                slot=slot,
                prompt_format=COMPACT_FORMAT,
                completions=[c.text.encode() for c in comps],
                advisory_rewards=rewards,
                seed=_seed(self.cfg.seed, self.peer_id, r, slot),
                sampler_logprobs=[c.logprob for c in comps],
            )
            for slot, (ref, comps, rewards) in enumerate(groups)
            if max(rewards) > min(rewards) and all(self.encode(c.text) == c.token_ids for c in comps)
        ]  # fmt: skip (a completion whose text does not re-encode to its tokens would not be the same on the wire)
        batch = RolloutBatch(peer_id=self.peer_id, round=r, policy_version=self.policy.version,
                             model_hash=self.model_hash, task_set_digest=self.tasks.digest, groups=shared)  # fmt: skip
        data = encode(batch)
        with self.counters.lock:
            self.counters.bytes_out += len(data)
        try:
            self.publish(data)
        except Exception as err:  # a failed publish costs the peers this round's groups, not the round
            log.warning("rl: publishing round %d failed: %s", r, err)

    def _external(self, r: int, should_stop: Callable[[], bool], covered: frozenset[str]) -> list[Candidate]:
        cfg = self.cfg
        expected = {p for p in self.rl_peers() if p != self.peer_id and not self.gate.reputation.banned(p, r)}
        batches = self.gate.take(r, expected, cfg.round_wait_s, should_stop)
        cands = [c for b in batches for c in verify_batch(b, self.tasks, self.swarm_id, cfg, self.encode,
                                                          self.counters, self.gate.reputation)]  # fmt: skip
        return select_external(cands, cfg.external_groups, cfg.per_peer_cap, _seed(cfg.seed, self.peer_id, r), covered)

    def _samples(self, refs, groups, external: list[Candidate]) -> list[Sample]:
        rows: list[tuple[list[int], list[tuple[list[int], bool]], list[float]]] = []
        for ref, comps, rewards in groups:
            rows.append((self.encode(self.tasks.prompt(ref)), [(c.token_ids, c.finished) for c in comps], rewards))
        for cand in external:
            comps = [(ids, len(ids) < self.cfg.max_new_tokens) for ids in map(self.encode, cand.completions)]
            rows.append((self.encode(self.tasks.prompt(cand.ref, cand.prompt_format)), comps, cand.rewards))
        adv = group_advantages(torch.tensor([rw for _, _, rw in rows], dtype=torch.float32))
        return [Sample(prompt, [*ids, self.eos_id] if finished else list(ids), float(a))
                for (prompt, comps, _), adv_row in zip(rows, adv, strict=True)
                for (ids, finished), a in zip(comps, adv_row.tolist(), strict=True)]  # fmt: skip

    def evaluate(self, num_items: int) -> float:
        """Greedy accuracy on a fixed eval set (indices no round or warm start uses)."""
        refs = [self.tasks.ref(i % len(self.tasks.specs), EVAL_BASE + i) for i in range(num_items)]
        prompts = [self.encode(self.tasks.prompt(ref)) for ref in refs]
        outs = self.sampler.sample(prompts, 1, [0] * len(prompts), 0.0)
        return sum(self.tasks.score(ref, o[0].text) for ref, o in zip(refs, outs, strict=True)) / num_items

    def _log(self, report: dict[str, Any]) -> None:
        log.info("rl round %d: reward %.3f, %d external groups, loss %.4f, %.1f s", report["round"],
                 report["mean_reward"], report["external_used"], report["loss"], report["round_s"])  # fmt: skip
        if self.cfg.log_file is None:
            return
        c = self.counters
        with c.lock:
            report |= {"groups_received": c.groups_received, "groups_filtered": c.groups_filtered,
                       "groups_used": c.groups_used, "rejected": dict(c.rejected), "late": dict(c.late),
                       "received_from": dict(c.received_from), "rejected_from": dict(c.rejected_from),
                       "used_from": dict(c.used_from), "bytes_out": c.bytes_out, "bytes_in": c.bytes_in,
                       "peer_id": self.peer_id}  # fmt: skip
        path = Path(self.cfg.log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(report) + "\n")
