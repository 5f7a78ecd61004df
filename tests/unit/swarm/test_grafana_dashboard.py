"""docs/grafana/swarm-dashboard.json queries only metrics a node exports (a renamed metric would leave a panel
silently empty)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from comms.metrics import NetMetrics
from swarm.runtime.role_metrics import RoleCollector
from swarm.web.http_api import _NodeCollector
from tests.unit.swarm.test_role_metrics import FakeEngine, FakeRlRole, _serve_role, _train_role

DASHBOARD = Path(__file__).parents[3] / "docs" / "grafana" / "swarm-dashboard.json"


def _exported_names() -> set[str]:
    metrics = NetMetrics()
    metrics.refuse_banned()
    for counter in (metrics.refused, metrics.peers_dropped):
        counter["x"] += 1
    host = SimpleNamespace(connected_peers=lambda: set())
    node = SimpleNamespace(metrics=metrics, membership=[], host=host, started_at=time.monotonic())
    engine = FakeEngine()
    engine.stats.refused("OVERLOADED")
    engine.stats.finished("stop", 1, 0.1, 0.01)
    registry = CollectorRegistry(auto_describe=False)
    collector = _NodeCollector(node)  # type: ignore[arg-type]
    collector.http_refused["401"] += 1
    registry.register(collector)  # type: ignore[arg-type]
    trainer = _train_role()
    trainer.peer.status.eval_loss = 2.6  # a figure only once evaluated
    registry.register(RoleCollector([_serve_role(engine), trainer, FakeRlRole()]))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_every_queried_metric_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = {m for e in exprs for m in re.findall(r"\b(vllm:[a-z_:]+|swarm_[a-z_]+)\b", e)}
    assert len(queried) >= 25
    missing = queried - _exported_names()
    assert not missing, f"the Grafana dashboard queries metrics no node exports: {sorted(missing)}"
