"""The dashboard's JSON: curves per peer bounded in peers and points, peer strings and lists cut to their bounds,
non-numbers from peers shown as none, serving rate from an injected clock."""

from __future__ import annotations

import json
from types import SimpleNamespace

from serving.stats import ServingStats
from swarm.web.dashboard import MAX_CURVES, MAX_LIST, MAX_PEERS, TEXT_CHARS, CurveHistory, DashboardState
from tests.unit.swarm.test_role_metrics import FakeEngine


def test_curves_keep_the_latest_points_of_the_latest_peers() -> None:
    history = CurveHistory(max_curves=2, max_points=3)
    for step in range(5):
        history.record("a", step, 10.0 - step)
    history.record("a", 4, 5.5)  # same x: the point is updated, not added
    history.record("b", 1, 1.0)
    history.record("c", 1, 1.0)  # a third peer drops the least recently updated one
    history.record("b", None, 1.0)
    history.record("b", 2, None)
    assert history.view() == {"b": [[1, 1.0]], "c": [[1, 1.0]]}
    history = CurveHistory(max_curves=2, max_points=3)
    for step in range(5):
        history.record("a", step, 10.0 - step)
    history.record("a", 4, 5.5)
    assert history.view() == {"a": [[2, 8.0], [3, 7.0], [4, 5.5]]}


def _row(peer_id: str, **overrides: object) -> dict:
    row = {"peer_id": peer_id, "self": False, "roles": ["train"], "version": "1", "model_id": "", "age_s": 0.5,
           "hardware": {"device": "cpu", "device_name": "x"}, "load": {"running": 1, "waiting": 0},
           "training": {"round": 1, "step": 10, "loss": 2.0}}  # fmt: skip
    return row | overrides


class FakeNode:
    def __init__(self, rows: list[dict], serve_role: object = None) -> None:
        self.rows = rows
        self.peer_id = rows[0]["peer_id"] if rows else "self"
        self.roles: list = [serve_role] if serve_role else []
        self.serve_role = serve_role

    def peers_view(self) -> list[dict]:
        return self.rows

    def health(self) -> tuple[str, None]:
        return "ok", None

    def placement_view(self) -> None:
        return None


def test_view_bounds_every_peer_string_list_and_count() -> None:
    huge = "<b>" + "x" * 10_000
    rows = [_row("p0", model_id=huge, version=huge, roles=[huge] * 1000, training={"step": "NaN", "loss": 1e400})]
    rows += [_row(f"p{i}") for i in range(1, MAX_PEERS + 50)]
    state = DashboardState(FakeNode(rows))
    state.sample()
    view = state.view()
    hostile = view["peers"][0]
    assert len(view["peers"]) == MAX_PEERS
    assert hostile["model_id"] == huge[:TEXT_CHARS] and hostile["version"] == huge[:TEXT_CHARS]
    assert len(hostile["roles"]) == MAX_LIST
    assert hostile["training"] == {"round": None, "step": None, "loss": None}
    assert "p0" not in view["loss"]  # no numbers, no point
    assert len(view["loss"]) == MAX_CURVES  # the latest updated peers' curves
    assert view["loss"][f"p{MAX_PEERS - 1}"] == [[10.0, 2.0]]
    assert len(json.dumps(view)) < 512 * 1024


def test_serving_figures_and_rate() -> None:
    now = [0.0]
    engine = FakeEngine()
    engine.stats = ServingStats()
    role = SimpleNamespace(name="serve", failure=None, engine=engine)
    state = DashboardState(FakeNode([_row("me", self=True)], serve_role=role), clock=lambda: now[0])
    state.sample()
    engine.stats.first_token(0.02)
    engine.stats.tokens(40, None)
    engine.stats.finished("stop", prompt_tokens=3, e2e_s=0.5, tpot_s=0.01)
    now[0] = 4.0
    state.sample()
    serving = state.view()["serving"]
    assert serving["tokens_per_s"] == 10.0
    assert serving["requests"] == 1 and serving["ttft_ms"] == 20.0 and serving["tpot_ms"] == 10.0
    assert serving["running"] == 2 and serving["waiting"] == 3 and serving["kv_usage"] == 0.4


def test_a_failing_sample_does_not_stop_the_sampler() -> None:
    import trio
    import trio.testing

    class BrokenNode(FakeNode):
        calls = 0

        def peers_view(self) -> list[dict]:
            BrokenNode.calls += 1
            raise RuntimeError("a bug in a view")

    state = DashboardState(BrokenNode([_row("me")]))

    async def main() -> None:
        with trio.move_on_after(10.5):  # virtual time: the mock clock jumps
            await state.run(1.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert BrokenNode.calls == 11  # at 0, 1, ..., 10 s: every interval sampled again
