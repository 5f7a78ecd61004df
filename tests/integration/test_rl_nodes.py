"""Real `swarm join --roles rl` processes on 127.0.0.1: rounds advance, peers' groups are used, a kill -9 does not
stop the others, and a node that also serves keeps answering while it learns."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
import torch

from tests.integration.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(300)]
TASKS = "rl.tasks=[{name: letter_counting, config: {min_words: 3, max_words: 5}}]"


@pytest.fixture(scope="module")
def warm_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny embedded model after a few supervised steps: it earns some reward, so groups have variance."""
    from serving.model import build_embedded_model, save_model
    from training.rl_config import TaskSpec
    from training.rl_tasks import TaskSet
    from training.rl_warmstart import WarmStartSettings, warm_start

    torch.set_num_threads(1)
    loaded = build_embedded_model("tiny", seed=0)
    tasks = TaskSet([TaskSpec(name="letter_counting", config={"min_words": 3, "max_words": 5})])
    stats = warm_start(loaded.hf_model, loaded.tokenizer, tasks, WarmStartSettings(max_steps=60, lr=1e-2,
                       probe_every=10, reward_floor=0.3), progress=lambda _: None)  # fmt: skip
    assert stats["probe"]["mean"] >= 0.3
    return save_model(loaded, tmp_path_factory.mktemp("warm-tiny"))


def _args(warm: Path, tmp: Path, name: str, *extra: str) -> list[str]:
    sets = [TASKS, "rl.local_groups=2", "rl.external_groups=2", "rl.round_wait_s=3", "serving.num_threads=1",
            "serving.dtype=float32", f"rl.checkpoint_dir={tmp / ('ckpt-' + name)}",
            f"serving.latency_profile_path={tmp / 'latency.json'}"]  # fmt: skip
    args = ["--model", str(warm), "--heartbeat-s", "0.5", "--peer-timeout-s", "3", *extra]
    for s in sets:
        args += ["--set", s]
    return args


def _rl(node: NodeProcess) -> dict:
    row = next(r for r in node.peers() if r["self"])
    return row["rl"] or {"round": 0, "groups_used": 0}


def test_three_rl_nodes_share_groups_and_survive_a_kill9(start_node, tmp_path: Path, warm_tiny: Path) -> None:
    wait = ("--set", "rl.start_peers=2")  # round 0 waits until the three know each other
    a = start_node("a", "--roles", "rl", *_args(warm_tiny, tmp_path, "a", *wait))
    b = start_node("b", "--roles", "rl", *_args(warm_tiny, tmp_path, "b", "--peer", a.addr, *wait))
    c = start_node("c", "--roles", "rl", *_args(warm_tiny, tmp_path, "c", "--peer", b.addr, *wait))  # not told of a
    nodes = [a, b, c]
    wait_until(lambda: all(_rl(n)["round"] >= 3 and _rl(n)["groups_used"] >= 1 for n in nodes), timeout_s=150)
    for n in nodes:
        state = _rl(n)
        assert state["groups_received"] >= state["groups_used"] >= 1
        assert state["groups_rejected"] == 0  # honest peers only
        metrics = httpx.get(f"{n.http}/metrics", timeout=5).text
        assert "swarm_rl_rounds_total" in metrics and "swarm_rl_groups_used_total" in metrics
    c.signal(signal.SIGKILL)
    before = {n.name: _rl(n)["round"] for n in (a, b)}
    wait_until(lambda: all(_rl(n)["round"] >= before[n.name] + 3 for n in (a, b)), timeout_s=90)
    assert c.proc.poll() == -signal.SIGKILL


def test_serve_and_rl_node_keeps_answering_while_it_learns(start_node, tmp_path: Path, warm_tiny: Path) -> None:
    node = start_node("s", "--roles", "serve,rl", *_args(warm_tiny, tmp_path, "s", "--set", "rl.external_groups=0"))
    model = httpx.get(f"{node.http}/v1/models", timeout=10).json()["data"][0]["id"]
    wait_until(lambda: _rl(node)["round"] >= 1, timeout_s=60)
    start_round, answered = _rl(node)["round"], 0
    for i in range(40):
        if answered >= 8 and _rl(node)["round"] >= start_round + 2:
            break
        body = {"model": model, "prompt": f"count a in banana {i}:", "max_tokens": 6, "temperature": 0,
                "ignore_eos": True}  # fmt: skip
        reply = httpx.post(f"{node.http}/v1/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 6
        answered += 1
    assert answered >= 8 and _rl(node)["round"] >= start_round + 2  # rounds ran while requests were answered
