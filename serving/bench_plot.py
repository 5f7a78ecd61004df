"""PNG of SLO attainment vs request rate, one curve per system, from the serving bench's probes.

Knows matplotlib and the probe dicts; nothing about how the probes were measured.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {
    "engine": "engine (chunked prefill + SLO admission)",
    "engine_fcfs": "engine, FCFS (no chunking, no admission)",
    "hf_generate": "transformers generate(), one at a time",
    "hf_generate_batch": "transformers continuous batching",
}


def plot_attainment(probes: list[dict], capacities: dict[str, float], path: str | Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    any_stopped = False
    for system, label in LABELS.items():
        points = sorted((p["rate_req_s"], p["slo_attainment"]) for p in probes if p["system"] == system)
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        cap = capacities.get(system)
        suffix = f" - capacity {cap:.2f} req/s" if cap else ""
        (line,) = ax.plot(xs, [100 * y for y in ys], marker="o", label=label + suffix)
        # Probes stopped once they had failed: their attainment counts what they did not finish as missed.
        mine = [p for p in probes if p["system"] == system]
        stopped = [(p["rate_req_s"], 100 * p["slo_attainment"]) for p in mine if p.get("abandoned")]
        if stopped:
            ax.scatter(*zip(*stopped, strict=True), marker="x", s=60, color=line.get_color(), zorder=3)
            any_stopped = True
    if any_stopped:
        ax.scatter([], [], marker="x", color="black", label="probe stopped once failed (unfinished counted as missed)")
    ax.axhline(90, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("Poisson request rate (req/s), long-prompt mix")
    ax.set_ylabel("requests meeting TTFT and TPOT SLO (%)")
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("SLO attainment vs request rate")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
