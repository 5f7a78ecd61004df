"""`swarm bench rl`: rollout sharing vs training alone, N real `swarm join --roles rl` processes on 127.0.0.1.

All arms start from one cached warm start; peer k keeps its identity and the swarm id is the seed's, not the
arm's, so peer k's task stream and sampling seeds are the same in every arm of a seed (paired). Each seed runs
every arm; per-arm figures are means over the seeds, each seed's kept beside them. Quick arms: 8/0 (no
sharing) and 4/4 with a fifth process that lies. Reports cumulative reward, final greedy accuracy, generated
tokens, rollout bytes, rejections by reason and the ratios. Knows processes, files and the round logs; the
learning happens inside the nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEERS = 4
START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
START_WAIT_S = 600.0  # a sharing arm's first peer waits for the others: on a busy machine they take minutes to start


@dataclass(frozen=True)
class Arm:
    name: str
    local_groups: int
    external_groups: int
    liar: bool = False
    trust_advisory: bool = False


QUICK_ARMS = (Arm("8/0", 8, 0), Arm("4/4+liar", 4, 4, liar=True))
FULL_ARMS = (*QUICK_ARMS, Arm("6/2", 6, 2), Arm("2/6", 2, 6), Arm("4/4+liar trusting", 4, 4, liar=True,
                                                                   trust_advisory=True))  # fmt: skip


def _wait_file(path: Path, deadline: float, procs: list[subprocess.Popen]) -> dict[str, Any]:
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:
                pass
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a bench process exited early (see the logs next to {path})")
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not appear")


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ArmRun:
    """Starts an arm's processes, waits for its rounds, stops them."""

    def __init__(self, arm: Arm, workdir: Path, warm_dir: Path, model_hash: str, rounds: int, eval_items: int,
                 overrides: list[str], seed: int = 0) -> None:  # fmt: skip
        self.arm, self.dir, self.warm_dir, self.model_hash = arm, workdir, warm_dir, model_hash
        self.rounds, self.eval_items, self.overrides, self.seed = rounds, eval_items, overrides, seed
        self.procs: list[subprocess.Popen] = []
        self.swarm_id = f"rlbench-seed{seed}"  # the tasks derive from it: the same in every arm of a seed

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        out = (self.dir / log_name).open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def _peer_args(self, k: int, keys: Path, bootstrap: list[str]) -> list[str]:
        a = self.arm
        sets = {"rl.local_groups": a.local_groups, "rl.external_groups": a.external_groups,
                "rl.max_rounds": self.rounds, "rl.log_file": self.dir / f"peer{k}.jsonl",
                "rl.checkpoint_dir": self.dir / f"ckpt{k}", "rl.trust_advisory": str(a.trust_advisory).lower(),
                "rl.eval_items": self.eval_items, "rl.eval_every": self.rounds,
                "rl.start_peers": PEERS - 1 if a.external_groups else 0, "rl.start_wait_s": START_WAIT_S,
                "rl.seed": self.seed,
                "serving.num_threads": 1, "serving.dtype": "float32", "network.heartbeat_s": 1.0}  # fmt: skip
        args = ["-m", "swarm", "join", "--roles", "rl", "--model", str(self.warm_dir), "--swarm-id", self.swarm_id,
                "--listen", "/ip4/127.0.0.1/tcp/0", "--identity", str(keys / f"peer{k}.key"),
                "--info-file", str(self.dir / f"info{k}.json"), "--log-level", "WARNING"]  # fmt: skip
        for peer in bootstrap:
            args += ["--peer", peer]
        for key, value in sets.items():
            args += ["--set", f"{key}={value}"]
        for text in self.overrides:  # the bench's own --set, the same on every peer of every arm
            args += ["--set", text]
        return args

    def run(self, keys: Path, progress: Callable[[str], None]) -> dict[str, Any]:
        self.keys = keys
        self.dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        try:
            self._spawn(self._peer_args(0, keys, []), "peer0.log")
            info = _wait_file(self.dir / "info0.json", time.monotonic() + START_TIMEOUT_S, self.procs)
            boot = info["addrs"][:1]
            for k in range(1, PEERS):
                self._spawn(self._peer_args(k, keys, boot), f"peer{k}.log")
            if self.arm.liar:
                self._spawn(["-m", "swarm.bench.rl_liar", "--peer", boot[0], "--swarm-id", self.swarm_id, "--identity",
                             str(keys / "liar.key"), "--model-hash", self.model_hash, "--rounds", str(self.rounds),
                             "--report", str(self.dir / "liar.json")], "liar.log")  # fmt: skip
            self._wait_rounds(progress, start)
        finally:
            self._stop()
        return self.summary(time.monotonic() - start)

    def _wait_rounds(self, progress: Callable[[str], None], start: float) -> None:
        honest = self.procs[:PEERS]
        deadline = time.monotonic() + START_TIMEOUT_S + 60.0 * self.rounds
        while time.monotonic() < deadline:
            done = [
                1 + max((x["round"] for x in _lines(self.dir / f"peer{k}.jsonl")), default=-1) for k in range(PEERS)
            ]
            progress(f"arm {self.arm.name}: rounds {done} of {self.rounds} ({time.monotonic() - start:.0f} s)")
            if min(done) >= self.rounds:
                return
            if any(p.poll() is not None for p in honest):
                raise RuntimeError(f"arm {self.arm.name}: a peer exited early; logs in {self.dir}")
            time.sleep(1.0)
        raise TimeoutError(f"arm {self.arm.name} did not finish its rounds; logs in {self.dir}")

    def _stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def summary(self, seconds: float) -> dict[str, Any]:
        logs = [[x for x in _lines(self.dir / f"peer{k}.jsonl") if x["round"] < self.rounds] for k in range(PEERS)]
        honest_ids = {lines[-1]["peer_id"] for lines in logs}
        by_round = [{x["round"]: x["mean_reward"] for x in lines} for lines in logs]
        from comms.identity import peer_id_of, read_identity

        liar = json.loads((self.dir / "liar.json").read_text()) if (self.dir / "liar.json").exists() else None
        liar_id = peer_id_of(read_identity(self.keys / "liar.key")) if self.arm.liar else None
        curve = []  # per round, the mean over the peers that ran it (one that caught up skipped a few)
        for r in range(self.rounds):
            values = [m[r] for m in by_round if r in m]
            curve.append(sum(values) / len(values) if values else curve[-1] if curve else 0.0)
        last = [lines[-1] for lines in logs]
        evals = [x["eval_accuracy"] for x in last if "eval_accuracy" in x]
        rejected: Counter[str] = Counter()
        late: Counter[str] = Counter()
        for x in last:
            rejected.update(x["rejected"])
            late.update(x["late"])
        false_rejects = sum(n for x in last for p, n in x["rejected_from"].items() if p in honest_ids)
        forged_received = sum(x["received_from"].get(liar_id, 0) for x in last) if liar_id else 0
        forged_used = sum(x["used_from"].get(liar_id, 0) for x in last) if liar_id else 0
        return {
            "local_groups": self.arm.local_groups, "external_groups": self.arm.external_groups,
            "rounds": self.rounds, "seconds": round(seconds, 1),
            "cumulative_reward": sum(curve), "reward_curve": curve,
            "first_round_reward": curve[0], "last_round_reward": curve[-1],
            "final_eval_accuracy": sum(evals) / len(evals) if evals else None,
            "generated_tokens": sum(x["tokens"] for x in last),
            "rollout_bytes_per_peer_round": sum(x["bytes_out"] for x in last) / (PEERS * self.rounds),
            "external_groups_used": sum(x["groups_used"] for x in last),
            "external_groups_filtered": sum(x["groups_filtered"] for x in last),
            "rejected_groups_by_reason": dict(sorted(rejected.items())),
            "late_groups_by_reason": dict(sorted(late.items())),
            "honest_false_rejects": false_rejects,
            "forged_groups_received": forged_received, "forged_groups_used": forged_used,
            "liar_batches_published": liar["published"] if liar else 0,
            "mean_round_s": sum(y["round_s"] for lines in logs for y in lines) / sum(len(lines) for lines in logs),
            "rounds_skipped": PEERS * self.rounds - sum(len(lines) for lines in logs),
        }  # fmt: skip


def make_identities(keys: Path) -> None:
    from comms.identity import load_or_create_identity

    keys.mkdir(parents=True, exist_ok=True)
    for name in [f"peer{k}" for k in range(PEERS)] + ["liar"]:
        load_or_create_identity(keys / f"{name}.key")


TOTALS = (
    "honest_false_rejects",
    "forged_groups_received",
    "forged_groups_used",
    "liar_batches_published",
    "rounds_skipped",
    "external_groups_used",
    "external_groups_filtered",
)  # summed over seeds, not averaged


def merge_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm over its seeds: counts in TOTALS and refusals summed, other figures (reward, accuracy, tokens,
    bytes, times) the mean of the seeds', the reward curve averaged round by round; each seed's summary kept."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [run[key] for run in runs]
        if key in TOTALS:
            out[key] = sum(values)
        elif isinstance(value, dict):
            total: Counter[str] = Counter()
            for v in values:
                total.update(v)
            out[key] = dict(sorted(total.items()))
        elif key == "reward_curve":
            out[key] = [sum(col) / len(col) for col in zip(*values, strict=True)]
        elif key in ("local_groups", "external_groups", "rounds"):
            out[key] = value
        elif all(isinstance(v, int | float) for v in values):
            out[key] = sum(values) / len(values)
        else:  # a missing eval in some seed: the mean of those that have one
            have = [v for v in values if v is not None]
            out[key] = sum(have) / len(have) if have else None
    out["seeds"] = len(runs)
    out["per_seed"] = list(runs)
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    local, shared = results["8/0"], results["4/4+liar"]
    out: dict[str, Any] = {
        "reward_gain_shared_vs_local": shared["cumulative_reward"] / max(local["cumulative_reward"], 1e-9),
        "generated_tokens_shared_vs_local": shared["generated_tokens"] / max(local["generated_tokens"], 1),
        "forged_rejected_fraction": (1.0 - shared["forged_groups_used"] / shared["forged_groups_received"])
        if shared["forged_groups_received"] else None,
        "forged_groups_received": shared["forged_groups_received"],
        "honest_false_rejects": sum(r["honest_false_rejects"] for r in results.values()),
    }  # fmt: skip
    if "per_seed" in local and "per_seed" in shared:  # the pair's ratio in each seed: the spread is the noise
        pairs = zip(local["per_seed"], shared["per_seed"], strict=True)
        out["reward_gain_per_seed"] = [s["cumulative_reward"] / max(loc["cumulative_reward"], 1e-9) for loc, s in pairs]
    if local["final_eval_accuracy"] is not None and shared["final_eval_accuracy"] is not None:
        out["eval_gain_shared_vs_local"] = shared["final_eval_accuracy"] / max(local["final_eval_accuracy"], 1e-9)
    for name, key in (("6/2", "reward_gain_6_2"), ("2/6", "reward_gain_2_6")):
        if name in results:
            out[key] = results[name]["cumulative_reward"] / max(local["cumulative_reward"], 1e-9)
    if "4/4+liar trusting" in results:
        out["trusting_reward_ratio_with_liar"] = (results["4/4+liar trusting"]["cumulative_reward"]
                                                  / max(shared["cumulative_reward"], 1e-9))  # fmt: skip
    return out


def plot_curves(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, res in results.items():
        ax.plot(
            range(len(res["reward_curve"])), res["reward_curve"], label=f"{name} (cum. {res['cumulative_reward']:.2f})"
        )
    ax.set_xlabel("round")
    ax.set_ylabel(f"mean reward of own rollouts ({PEERS} peers)")
    ax.set_title("swarm bench rl: rollout sharing vs training alone")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
