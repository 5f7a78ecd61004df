"""Readable tables of a serving bench result (rich): one row per system, then the ratios.

Knows the result dict's shape; nothing about how it was measured.
"""

from __future__ import annotations

from rich.table import Table

SYSTEMS = ("engine", "engine_fcfs", "hf_generate_batch", "hf_generate")  # first, in this order; then any other


def _ms(summary: dict, metric: str, q: str) -> str:
    value = summary.get(metric, {}).get(q)
    return "-" if value is None else f"{value:.1f}"


def summary_table(result: dict) -> Table:
    sat = result["results"]["saturation"]
    good = result["results"]["goodput"]
    table = Table(title="swarm bench serve", title_justify="left")
    columns = ("system", "out tok/s (saturation)", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "capacity req/s stalls/mean")
    for column in columns:
        table.add_column(column, justify="left" if column == "system" else "right")
    for system in [*(s for s in SYSTEMS if s in sat), *(s for s in sat if s not in SYSTEMS)]:
        s = sat[system]
        caps = good.get("capacity_req_s_by_definition", {}).get(system)
        cap = "-" if caps is None else f"{caps['with_stalls']:.2f} / {caps['mean_tpot']:.2f}"
        table.add_row(
            system,
            f"{s['output_tok_s']:.1f}",
            f"{_ms(s, 'ttft_ms', 'p50')} / {_ms(s, 'ttft_ms', 'p99')}",
            f"{_ms(s, 'tpot_ms', 'p50')} / {_ms(s, 'tpot_ms', 'p99')}",
            cap,
        )
    slo = good["slo"]
    table.caption = f"SLOs: TTFT {1000 * slo['ttft_s']:.0f} ms, TPOT {1000 * slo['tpot_s']:.1f} ms; " + ", ".join(
        f"{k} {v:.2f}" for k, v in result["ratios"].items() if v is not None
    )
    return table
