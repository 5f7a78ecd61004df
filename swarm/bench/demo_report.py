"""What `swarm demo` shows: the live membership and training tables, and at the end the summary table, the PNG of
the loss and reward curves, the JSON summary and the checks that decide its exit code. Knows figures, not nodes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MIN_EVAL_DROP = 0.10  # the demo's training must lower the eval loss by at least this fraction
MIN_SERVED = 2
STOPPED = {"stop", "eos"}


def membership_table(nodes: list[Any], rows: list[list[dict[str, Any]]], elapsed_s: float) -> Table:
    names = {n.info.get("peer_id"): n.name for n in nodes}
    table = Table(title=f"membership after {elapsed_s:.0f} s", title_justify="left")
    for col in ("node", "peer id", "bootstrapped from", "knows", "peers seen"):
        table.add_column(col, justify="right" if col == "knows" else "left")
    for i, (node, seen_rows) in enumerate(zip(nodes, rows, strict=True)):
        seen = sorted(names.get(p["peer_id"], p["peer_id"][-6:]) for p in seen_rows if not p.get("self"))
        colour = "green" if len(seen_rows) >= len(nodes) else "yellow"
        knows = f"[{colour}]{len(seen_rows)}/{len(nodes)}[/]"
        table.add_row(node.name, node.info.get("peer_id", "?")[-10:], nodes[i - 1].name if i else "-", knows,
                      ", ".join(seen))  # fmt: skip
    return table


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "-"


def training_table(train: Any) -> Table:
    table = Table(title="training (DiLoCo): eval loss of the held-out split at each round's end", title_justify="left")
    for col in ("node", "round", "step", "train loss", "eval loss by round"):
        table.add_column(col)
    for node, p in zip(train.nodes, train.progress, strict=True):
        curve = " -> ".join(_fmt(v) for _, v in sorted(p.eval_by_round.items()))
        table.add_row(node.name, str(p.round), f"{p.step}/{train.total_steps}", _fmt(p.loss), curve or "-")
    return table


@dataclass
class Summary:
    """Everything the demo measured; `as_json` is what `--json` writes."""

    num_nodes: int
    plan: dict[str, Any]
    workdir: str
    converged_s: float | None = None
    train_s: float = 0.0
    eval_curve: dict[int, float] = field(default_factory=dict)
    answers: list[Any] = field(default_factory=list)
    served_requests: int = 0
    served_model: str = ""
    reward_curve: dict[int, float] = field(default_factory=dict)
    rl_rounds: int = 0
    rl_groups_shared: int = 0
    rl_groups_used: int = 0
    exit_codes: list[int | None] = field(default_factory=list)
    total_s: float = 0.0

    def train(self, curve: dict[int, float], elapsed_s: float) -> None:
        self.eval_curve, self.train_s = curve, round(elapsed_s, 1)

    def serve(self, answers: list[Any], served: int, model: str) -> None:
        self.answers, self.served_requests, self.served_model = answers, served, model

    def rl(self, logs: list[Any]) -> None:
        from swarm.bench.demo_serve import reward_curve

        self.reward_curve = reward_curve(logs)
        self.rl_rounds = min(len(log.rounds) for log in logs)
        # groups a node took in from its peers (checked by its gate), and of those, the ones it trained on
        self.rl_groups_shared = sum(int(log.last.get("groups_received", 0)) for log in logs)
        self.rl_groups_used = sum(int(log.last.get("groups_used", 0)) for log in logs)

    def as_json(self) -> dict[str, Any]:
        rounds = sorted(self.eval_curve)
        start = self.eval_curve[rounds[0]] if rounds else math.nan
        end = self.eval_curve[rounds[-1]] if rounds else math.nan
        ttft = {a.via: None if a.ttft_ms is None else round(a.ttft_ms, 1) for a in self.answers}
        return {
            "converged_s": self.converged_s,
            "train_rounds": rounds[-1] if rounds else 0,
            "train_s": self.train_s,
            "eval_loss_start": round(start, 4),
            "eval_loss_end": round(end, 4),
            "eval_loss_by_round": {str(r): round(v, 4) for r, v in self.eval_curve.items()},
            "served_model": self.served_model,
            "served_requests": self.served_requests,
            "ttft_ms": ttft,
            "answers": [a.as_dict() for a in self.answers],
            "rl_rounds": self.rl_rounds,
            "rl_groups_shared": self.rl_groups_shared,
            "rl_groups_used": self.rl_groups_used,
            "rl_reward_by_round": {str(r): round(v, 4) for r, v in self.reward_curve.items()},
            "exit_codes": self.exit_codes,
            "total_s": self.total_s,
            "num_nodes": self.num_nodes,
            "plan": self.plan,
        }

    def checks(self) -> list[tuple[str, bool]]:
        data = self.as_json()
        start, end = data["eval_loss_start"], data["eval_loss_end"]
        drop = (start - end) / start if start and math.isfinite(start) and math.isfinite(end) else 0.0
        return [
            (f"eval loss fell by {drop:.0%} (>= {MIN_EVAL_DROP:.0%})", drop >= MIN_EVAL_DROP),
            (f"{self.served_requests} requests served (>= {MIN_SERVED})", self.served_requests >= MIN_SERVED),
            ("every answer ended on EOS or a stop string",
             bool(self.answers) and all(a.finish_reason in STOPPED for a in self.answers)),
            (f"{self.rl_rounds} RL rounds, {self.rl_groups_shared} groups shared", self.rl_rounds > 0),
            (f"every node left cleanly (exit codes {self.exit_codes})", all(c == 0 for c in self.exit_codes)),
        ]  # fmt: skip

    def table(self) -> Table:
        data = self.as_json()
        table = Table(title="swarm demo: summary", title_justify="left")
        table.add_column("measure")
        table.add_column("value", justify="right")
        ttft = ", ".join(f"{k}: {v:.0f} ms" for k, v in data["ttft_ms"].items() if v is not None)
        for name, value in (
            ("nodes know each other after", f"{data['converged_s']} s"),
            ("training rounds (DiLoCo)", str(data["train_rounds"])),
            ("eval loss start -> end", f"{data['eval_loss_start']:.3f} -> {data['eval_loss_end']:.3f}"),
            ("requests served", str(data["served_requests"])),
            ("time to first token", ttft or "-"),
            ("RL rounds (per node)", str(data["rl_rounds"])),
            ("RL groups shared / trained on", f"{data['rl_groups_shared']} / {data['rl_groups_used']}"),
            ("wall time", f"{data['total_s']:.0f} s"),
        ):
            table.add_row(name, value)
        return table

    def plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        ax1.plot(list(self.eval_curve), list(self.eval_curve.values()), marker="o")
        ax1.set(xlabel="DiLoCo round", ylabel="eval loss (nats / token)", title="training")
        ax2.plot(list(self.reward_curve), list(self.reward_curve.values()), marker="o", color="tab:green")
        ax2.set(xlabel="RL round", ylabel="mean reward of own rollouts", title="RL (rollouts shared)")
        for ax in (ax1, ax2):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)

    def finish(self, console: Console, json_path: Path | None, plot_path: Path) -> int:
        """Print the table and the checks, write the PNG (and the JSON); 0 when every check passed."""
        console.print(self.table())
        checks = self.checks()
        for text, ok in checks:
            console.print(f"  [{'green' if ok else 'red'}]{'OK ' if ok else 'NO '}[/] {text}")
        self.plot(plot_path)
        console.print(f"curves: {plot_path}")
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(self.as_json(), indent=2) + "\n")
            console.print(f"summary: {json_path}")
        return 0 if all(ok for _, ok in checks) else 1
