"""How peers look to a person: the rich table of `swarm status` and `swarm demo`."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _short(peer_id: str) -> str:
    return f"{peer_id[:8]}…{peer_id[-6:]}" if len(peer_id) > 16 else peer_id


def peers_table(rows: list[dict[str, Any]], title: str = "peers") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("peer")
    table.add_column("roles")
    table.add_column("version")
    table.add_column("device")
    table.add_column("address")
    table.add_column("age s", justify="right")
    for row in rows:
        name = _short(row["peer_id"]) + (" (self)" if row.get("self") else "")
        addr = row["addrs"][0].split("/p2p/")[0] if row.get("addrs") else "-"
        device = (row.get("hardware") or {}).get("device", "?")
        table.add_row(
            name,
            ",".join(row.get("roles") or []) or "-",
            row.get("version", "?"),
            device,
            addr,
            f"{row.get('age_s', 0):.1f}",
        )
    return table
