"""The live dashboard: the page at `/` (static files shipped in `swarm/web/static/`) and the JSON it polls at
`/v1/swarm/dashboard`: the swarm's peers, training loss and RL reward curves per peer, this node's serving figures.

Curves are sampled from the peers' announces (what they claim, shown as claimed) into bounded histories; every
string from a peer is cut to a bounded length here and rendered as text, never markup, by the page. The page
itself carries no data, so it is served without an API key; the JSON sits behind the node's HttpGuard like the
rest of the API. Knows the node's views, not how they are gathered.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from protocols.errors import SwarmError

log = logging.getLogger(__name__)
MAX_PEERS = 256  # rows in the peers table
MAX_CURVES = 64  # peers whose curves are kept
MAX_POINTS = 120  # points per curve
TEXT_CHARS = 128  # longest peer-supplied string shown
MAX_LIST = 16  # longest peer-supplied list shown (roles, addresses)

# path -> (file in swarm/web/static, media type); these are served without a key (see module docstring)
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
OPEN_PATHS = tuple(STATIC_FILES)
# Defence in depth: even a string that became markup could run no script and load nothing from elsewhere.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def _text(value: Any) -> str:
    return str(value)[:TEXT_CHARS]


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else a peer may have sent."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class CurveHistory:
    """Per-peer curves of (x, y) points, bounded in peers (the least recently updated is dropped) and in points."""

    def __init__(self, max_curves: int = MAX_CURVES, max_points: int = MAX_POINTS) -> None:
        self.max_curves = max_curves
        self.max_points = max_points
        self._curves: OrderedDict[str, deque[tuple[float, float]]] = OrderedDict()

    def record(self, peer_id: str, x: float | None, y: float | None) -> None:
        """Add a point unless it is not a number or its x is the curve's latest x (nothing new)."""
        if x is None or y is None:
            return
        curve = self._curves.get(peer_id)
        if curve is None:
            curve = self._curves[peer_id] = deque(maxlen=self.max_points)
            while len(self._curves) > self.max_curves:
                self._curves.popitem(last=False)
        if curve and curve[-1][0] == x:
            curve[-1] = (x, y)
            return
        curve.append((x, y))
        self._curves.move_to_end(peer_id)

    def view(self) -> dict[str, list[list[float]]]:
        return {peer: [[x, y] for x, y in curve] for peer, curve in self._curves.items()}


class DashboardState:
    """What the page shows, sampled from the node every interval: curves per peer, and this node's serving rate."""

    def __init__(self, node: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.clock = clock
        self.loss = CurveHistory()  # x: step
        self.reward = CurveHistory()  # x: RL round
        self._tokens: tuple[float, int] | None = None  # when, generated tokens then
        self.tokens_per_s = 0.0

    def sample(self) -> None:
        for row in self.node.peers_view()[:MAX_PEERS]:
            training = row.get("training") or {}
            self.loss.record(_text(row["peer_id"]), _number(training.get("step")), _number(training.get("loss")))
            rl = row.get("rl") or {}
            self.reward.record(_text(row["peer_id"]), _number(rl.get("round")), _number(rl.get("mean_reward")))
        for role in self.node.roles:
            counters = getattr(role, "rl_counters", None)
            if callable(counters) and not role.failure:
                try:
                    rl = counters()
                except SwarmError:  # no round yet
                    continue
                self.reward.record(self.node.peer_id, _number(rl.round), _number(rl.reward))
        engine = self._engine()
        if engine is not None:
            now, tokens = self.clock(), engine.stats.snapshot().generation_tokens
            if self._tokens is not None and now > self._tokens[0]:
                self.tokens_per_s = (tokens - self._tokens[1]) / (now - self._tokens[0])
            self._tokens = (now, tokens)

    def _engine(self) -> Any:
        role = self.node.serve_role
        return None if role is None or role.failure else role.engine

    def view(self) -> dict[str, Any]:
        node = self.node
        return {
            "self": node.peer_id,
            "peers": [_peer(row) for row in node.peers_view()[:MAX_PEERS]],
            "loss": self.loss.view(),
            "reward": self.reward.view(),
            "serving": self._serving(),
            "health": node.health()[0],
            "placement": node.placement_view(),
        }

    def _serving(self) -> dict[str, Any] | None:
        engine = self._engine()
        if engine is None:
            return None
        try:
            stats, load, counters = engine.stats.snapshot(), engine.load(), engine.counters()
        except SwarmError:  # stopped since the check
            return None
        return {
            "model_id": _text(engine.model_id),
            "requests": sum(stats.finished.values()),
            "refused": sum(stats.refused.values()),
            "ttft_ms": _mean_ms(stats.ttft),
            "tpot_ms": _mean_ms(stats.tpot),
            "itl_ms": _mean_ms(stats.inter_token),
            "e2e_ms": _mean_ms(stats.e2e),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "generation_tokens": stats.generation_tokens,
            "running": load.running,
            "waiting": load.waiting,
            "kv_usage": round((counters["kv_blocks"] - counters["kv_blocks_free"]) / max(counters["kv_blocks"], 1), 4),
        }

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                self.sample()
            except Exception as err:  # a page that misses a point must not take the node's HTTP API down with it
                log.warning("dashboard sample failed: %s", err)
                log.debug("dashboard sample failure", exc_info=err)
            await trio.sleep(interval_s)


def _mean_ms(hist: Any) -> float | None:
    return round(1000 * hist.total / hist.count, 2) if hist.count else None


def _peer(row: dict[str, Any]) -> dict[str, Any]:
    """A peers_view row with every string and list bounded."""
    hardware, load, training = row.get("hardware") or {}, row.get("load") or {}, row.get("training") or {}
    return {
        "peer_id": _text(row["peer_id"]),
        "self": bool(row.get("self")),
        "roles": [_text(r) for r in list(row.get("roles") or [])[:MAX_LIST]],
        "version": _text(row.get("version", "")),
        "model_id": _text(row.get("model_id", "")),
        "age_s": _number(row.get("age_s")),
        "device": _text(hardware.get("device", "")),
        "device_name": _text(hardware.get("device_name", "")),
        "load": {k: _number(load.get(k)) for k in ("running", "waiting", "predicted_ttft_ms", "decode_tok_s")},
        "training": {k: _number(training.get(k)) for k in ("round", "step", "loss")},
        "devices": [_device(d) for d in list(row.get("devices") or [])[:MAX_LIST] if isinstance(d, dict)],
    }


def _device(device: dict[str, Any]) -> dict[str, Any]:
    """A device of a peers_view row: kind, name and the roles placed on it, bounded."""
    roles = [_text(r) for r in list(device.get("roles") or [])[:MAX_LIST]]
    return {"kind": _text(device.get("kind", "")), "name": _text(device.get("name", "")), "roles": roles}


def _static(name: str, media_type: str) -> Callable[[Request], Any]:
    body = resources.files("swarm.web").joinpath("static", name).read_bytes()

    async def serve(_: Request) -> Response:
        return Response(body, media_type=media_type, headers={**SECURITY_HEADERS, "cache-control": "no-cache"})

    return serve


def dashboard_routes(state: DashboardState) -> list[Route]:
    async def data(_: Request) -> JSONResponse:
        return JSONResponse(state.view(), headers=SECURITY_HEADERS)

    routes = [Route(path, _static(name, media)) for path, (name, media) in STATIC_FILES.items()]
    return [*routes, Route("/v1/swarm/dashboard", data)]
