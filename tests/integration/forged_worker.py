"""An averaging process that lies in every way a training peer can (tests only).

Run as `python -m tests.integration.forged_worker FD_IN FD_OUT` by a `HivemindAverager` whose `worker_module`
names it (never imported by the test process: hivemind and libp2p cannot share an interpreter). It is
`comms.hivemind_worker` with three things changed: every part it sends carries an attack (weight 1e30 on a
huge part, a NaN value, a wrong shape, a NaN or negative weight, a huge norm: `ATTACKS`, one per round), and its
own part, in the region it reduces, has a NaN weight; it claims round `FAR_ROUND` with a made-up digest in every
round; and it shares poisoned tensors (its first state under the honest digest, later ones claiming a round and a
step far past the run's end) as the self-declared best donor. As a reducer it is honest. It assumes the fp32 codec.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hivemind.proto import averaging_pb2, runtime_pb2

from comms import hivemind_worker

FAR_ROUND = 10**6
# one per round, to every reducer (in a small model's round one member reduces the whole vector)
ATTACKS = ("weight_1e30_huge", "nan_part", "wrong_shape", "nan_weight", "negative_weight", "huge_norm")


def forge(part: runtime_pb2.Tensor, attack: str) -> tuple[runtime_pb2.Tensor, float]:
    values = np.frombuffer(part.buffer, dtype="<f4").copy()
    weight = 1.0
    if attack in ("weight_1e30_huge", "huge_norm"):
        values = values * 1e6 + 1e3
        weight = 1e30 if attack == "weight_1e30_huge" else 1.0
    elif attack == "nan_weight":
        weight = float("nan")
    elif attack == "negative_weight":
        weight = -1.0
    elif attack == "nan_part":
        values[0] = np.nan
    elif attack == "wrong_shape":
        values = values[:-1]
    out = runtime_pb2.Tensor()
    out.CopyFrom(part)
    out.buffer = values.astype("<f4").tobytes()
    del out.size[:]
    out.size.extend([values.size])
    return out, weight


class ForgedRunner(hivemind_worker._AverageReturningRunner):
    rounds = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        ForgedRunner.rounds += 1
        self.weight = float("nan")  # its own part, averaged by its own reducer, never counts

    async def _generate_input_for_peer(self, peer_index: int) -> Any:
        attack = ATTACKS[(ForgedRunner.rounds - 1) % len(ATTACKS)]
        first = True
        async for part in self.tensor_part_container.iterate_input_parts_for(peer_index):
            forged, weight = forge(part, attack)
            if first:
                yield averaging_pb2.AveragingData(
                    code=averaging_pb2.PART_FOR_AVERAGING, group_id=self.group_id, tensor_part=forged, weight=weight
                )
                first = False
            else:
                yield averaging_pb2.AveragingData(tensor_part=forged, weight=weight)


class ForgedWorker(hivemind_worker.Worker):
    def handle_step(self, req: dict[str, Any]) -> dict[str, Any]:
        return super().handle_step({**req, "round": FAR_ROUND, "digest": "f" * 32})

    def handle_share_state(self, req: dict[str, Any]) -> dict[str, Any]:
        meta = dict(req["metadata"])
        if meta.get("round", 0) > 0:  # past the run's end, in a round that holds that step
            inner_steps = meta["step"] // meta["round"]
            meta.update(round=FAR_ROUND, step=FAR_ROUND * inner_steps)
        poisoned = [a + 1.0 for a in req["tensors"]]
        reply = super().handle_share_state({**req, "metadata": meta, "tensors": poisoned})
        self.averager.state_sharing_priority = 1e30  # hivemind's own loader would pick this donor first
        return reply


if __name__ == "__main__":
    hivemind_worker._AverageReturningRunner = ForgedRunner  # looked up when each round starts
    hivemind_worker.Worker = ForgedWorker
    hivemind_worker.main()
