"""How peers look to a person: the rich table of `swarm status`."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _short(peer_id: str) -> str:
    return f"{peer_id[:8]}…{peer_id[-6:]}" if len(peer_id) > 16 else peer_id


def peers_table(rows: list[dict[str, Any]], title: str = "peers") -> Table:
    """One row per peer; serving and training columns appear when some peer has those roles."""
    serving = any("serve" in (r.get("roles") or []) for r in rows)
    training = any("train" in (r.get("roles") or []) for r in rows)
    table = Table(title=title, title_justify="left")
    for name, justify in (("peer", "left"), ("roles", "left"), ("version", "left"), ("device", "left"),
                          ("address", "left"), ("age s", "right")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if serving:
        for name in ("model", "running", "waiting", "TTFT ms", "free KV"):
            table.add_column(name, justify="left" if name == "model" else "right")
    if training:
        for name in ("round", "step", "loss"):
            table.add_column(name, justify="right")
    for row in rows:
        cells = [
            _short(row["peer_id"]) + (" (self)" if row.get("self") else ""),
            ",".join(row.get("roles") or []) or "-",
            row.get("version", "?"),
            (row.get("hardware") or {}).get("device", "?"),
            row["addrs"][0].split("/p2p/")[0] if row.get("addrs") else "-",
            f"{row.get('age_s', 0):.1f}",
        ]
        if serving:
            load = row.get("load") or {}
            is_server = "serve" in (row.get("roles") or [])
            cells += [row.get("model_id") or "-"] + (
                [str(load.get("running", 0)), str(load.get("waiting", 0)), f"{load.get('predicted_ttft_ms', 0):.0f}",
                 str(load.get("free_kv_tokens", 0))] if is_server else ["-"] * 4
            )  # fmt: skip
        if training:
            state = row.get("training") or {}
            loss = state.get("loss")
            if "train" in (row.get("roles") or []):
                cells += [str(state.get("round", 0)), str(state.get("step", 0)), "-" if loss is None else f"{loss:.4f}"]
            else:
                cells += ["-"] * 3
        table.add_row(*cells)
    return table
