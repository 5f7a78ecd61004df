"""A lying RL peer for the bench and tests: publishes forged rollout batches, one kind per round.

Kinds: wrong answers claimed correct, task indices it chose itself, over-long completions, a replay of an older
round, a task config nobody knows, more groups than the limit, and a batch signed by it that claims another
peer's id. It follows the honest peers' rounds from their announces. Never run it outside a bench or a test.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import trio

from protocols import encode
from protocols.ids import ROLLOUTS_TOPIC, topic
from protocols.rollouts import RolloutBatch, RolloutGroup, TaskRefRecord

log = logging.getLogger(__name__)
KINDS = ("wrong_answers", "not_derived", "oversized", "replayed", "unknown_task", "too_many_groups", "forged_origin")
POLL_S = 0.2


class Liar:
    """Builds forged batches against the honest peers' task set and model."""

    def __init__(self, config: Any, node: Any, model_hash: str) -> None:
        from training.rl_tasks import TaskSet

        self.cfg, self.node, self.model_hash = config.rl, node, model_hash
        self.swarm_id = config.network.swarm_id
        self.tasks = TaskSet(self.cfg.tasks)
        self.sent: dict[int, bytes] = {}
        self.published = 0

    def _group(self, slot: int, ref: Any, completions: list[bytes], rewards: list[float]) -> RolloutGroup:
        return RolloutGroup(task=TaskRefRecord(ref.dataset, ref.config_digest, ref.index), slot=slot,
                            prompt_format="compact-v1", completions=completions, advisory_rewards=rewards)  # fmt: skip

    def forged(self, kind: str, r: int, victim: str | None) -> bytes:
        g, n = self.cfg.num_generations, self.cfg.local_groups
        me = self.node.peer_id
        if kind == "replayed" and self.sent:
            return self.sent[min(self.sent)]
        groups = []
        for slot in range(20 if kind == "too_many_groups" else n):
            ref = self.tasks.derive(self.swarm_id, me, r, slot)
            if kind == "not_derived":  # an index it likes, not the one its id and the round give
                ref = self.tasks.ref(slot % len(self.tasks.specs), slot)
            wrong = (self.tasks.answer(ref) + "7").encode()
            completions = [wrong] * g
            if kind == "oversized":
                completions = [b"9" * (self.cfg.max_new_tokens * 4 + 1)] * g
            if kind == "not_derived":  # right answers half the time: only the index is a lie
                completions = [self.tasks.answer(ref).encode() if i % 2 else wrong for i in range(g)]
            group = self._group(slot, ref, completions, [float(i % 2 == 0) for i in range(g)])
            if kind == "not_derived":
                group.advisory_rewards = [float(i % 2 == 1) for i in range(g)]
            if kind == "unknown_task":
                group.task.config_digest = "0" * 32
            groups.append(group)
        claimed = victim if kind == "forged_origin" and victim else me
        batch = RolloutBatch(peer_id=claimed, round=r, policy_version=r, model_hash=self.model_hash,
                             task_set_digest=self.tasks.digest, groups=groups)  # fmt: skip
        data = encode(batch)
        if kind == "wrong_answers":
            self.sent[r] = data
        return data

    async def run(self, rounds: int, report: Path | None = None) -> None:
        rl_topic = topic(self.swarm_id, ROLLOUTS_TOPIC)
        last = -1
        async with self.node.host.subscribe(rl_topic) as channel, trio.open_nursery() as nursery:
            nursery.start_soon(_drain, channel)
            while last < rounds - 1:
                states = [e.announce for e in self.node.membership.entries() if e.announce.rl is not None]
                current = max((a.rl.round for a in states), default=-1)
                if current > last:
                    last = current
                    victim = states[0].peer_id if states else None
                    kind = KINDS[current % len(KINDS)]
                    await self.node.host.publish(rl_topic, self.forged(kind, current, victim))
                    self.published += 1
                    log.info("liar: round %d: published a %s batch", current, kind)
                    if report is not None:  # after every batch: the bench may stop this process at any time
                        report.write_text(json.dumps({"peer_id": self.node.peer_id, "published": self.published}))
                await trio.sleep(POLL_S)
            nursery.cancel_scope.cancel()


async def _drain(channel: trio.MemoryReceiveChannel) -> None:
    async for _ in channel:
        pass


async def _main(args: argparse.Namespace) -> None:
    from swarm.runtime.config import load_config
    from swarm.runtime.node import Node

    flags = {"network.listen": ["/ip4/127.0.0.1/tcp/0"], "network.peers": args.peer, "network.swarm_id": args.swarm_id,
             "network.identity": args.identity}  # fmt: skip
    config = load_config(args.config, flags=flags)
    node = Node(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        liar = Liar(config, node, args.model_hash)
        await liar.run(args.rounds, args.report)
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peer", action="append", required=True)
    parser.add_argument("--swarm-id", required=True)
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--model-hash", required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--report", type=Path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(_main, parser.parse_args())


if __name__ == "__main__":
    main()
