"""The node's HTTP API: `/healthz`, `/v1/swarm/peers` (JSON), `/metrics` (Prometheus text), the OpenAI API and the
live dashboard at `/`.

A starlette app behind the HttpGuard (API keys, body limit), served by hypercorn's trio worker on the node's own
event loop, over TLS when the config names a certificate. It reads the node's state and never blocks the loop.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from swarm.runtime.role_metrics import RoleCollector
from swarm.web.dashboard import OPEN_PATHS as DASHBOARD_OPEN_PATHS
from swarm.web.dashboard import DashboardState, dashboard_routes
from swarm.web.http_guard import HttpGuard, read_api_keys

if TYPE_CHECKING:
    from swarm.runtime.node import Node

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _NodeCollector:
    """Exposes the node's counters to prometheus_client at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.http_refused: Counter[str] = Counter()  # filled by the HttpGuard

    def collect(self):  # type: ignore[no-untyped-def]
        node = self.node
        snap = node.metrics.snapshot()
        peers = GaugeMetricFamily("swarm_peers", "Live peers in the membership table (this node excluded).")
        peers.add_metric([], len(node.membership))
        yield peers
        connected = GaugeMetricFamily("swarm_connected_peers", "Peers with an open libp2p connection.")
        connected.add_metric([], len(node.host.connected_peers()))
        yield connected
        uptime = GaugeMetricFamily("swarm_uptime_seconds", "Seconds since the node started.")
        uptime.add_metric([], time.monotonic() - node.started_at)
        yield uptime
        for name, key, label, doc in (
            ("swarm_messages_in", "messages_in", "kind", "Messages received, by kind."),
            ("swarm_messages_out", "messages_out", "kind", "Messages sent, by kind."),
            ("swarm_bytes_in", "bytes_in", "channel", "Bytes received, by channel."),
            ("swarm_bytes_out", "bytes_out", "channel", "Bytes sent, by channel."),
            ("swarm_refused_messages", "refused", "code", "Messages refused, by error code."),
            ("swarm_stream_errors", "stream_errors", "protocol", "Inbound streams ended as hostile, by protocol."),
            ("swarm_peers_dropped", "peers_dropped", "reason", "Peers disconnected and banned, by reason."),
        ):
            family = CounterMetricFamily(name, doc, labels=[label])
            for value_label, value in sorted(snap[key].items()):
                family.add_metric([value_label], value)
            yield family
        refused = CounterMetricFamily("swarm_http_refused", "HTTP requests answered 4xx, by status.", labels=["code"])
        for status, count in sorted(self.http_refused.items()):
            refused.add_metric([status], count)
        yield refused


def build_app(node: Node, dashboard: DashboardState) -> HttpGuard:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector := _NodeCollector(node))  # type: ignore[arg-type]
    registry.register(RoleCollector(node.roles))  # type: ignore[arg-type]

    async def healthz(_: Request) -> JSONResponse:
        status, reason = node.health()
        body = {"status": status, "peer_id": node.peer_id, "peers": len(node.membership)}
        placement = node.placement_view()
        if placement is not None:
            body["placement"] = placement
        if reason is not None:
            body["reason"] = reason
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    async def peers(_: Request) -> JSONResponse:
        return JSONResponse(node.peers_view())

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=PROMETHEUS_CONTENT_TYPE)

    from swarm.web.openai_api import OpenAIApi

    routes = [
        Route("/healthz", healthz),
        Route("/v1/swarm/peers", peers),
        Route("/metrics", metrics),
        *OpenAIApi(node).routes(),
        *dashboard_routes(dashboard),
    ]
    section = node.config.node
    return HttpGuard(
        Starlette(routes=routes), api_keys=read_api_keys(section.api_key_file) if section.api_key_file else [],
        open_paths=[*section.open_paths, *DASHBOARD_OPEN_PATHS], max_body_bytes=section.max_body_bytes,
        refused=collector.http_refused,
    )  # fmt: skip


async def serve_http(node: Node, bind: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on ``bind`` (HOST:PORT); reports the URL actually bound (port 0 resolved)."""
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 5.0
    if node.config.node.tls_cert is not None:
        config.certfile = str(node.config.node.tls_cert)
        config.keyfile = str(node.config.node.tls_key)
    dashboard = DashboardState(node)
    app = build_app(node, dashboard)

    async def _serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve(app, config, task_status=task_status, mode="asgi")  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dashboard.run, node.config.network.heartbeat_s)
        binds = await nursery.start(_serve)
        task_status.started(binds[0] if binds else f"http://{bind}")
