"""Remote generation across real serving nodes: routing, exact greedy results, failover after kill -9, and the
official `openai` package against a node's OpenAI-compatible endpoint."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
import torch

from serving.model import load_model
from swarm.client import Client, GenerationRefused, NoPeerAvailable
from tests.integration.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "tiny"
# Slow steps (x4) so a stream lasts long enough to kill its server in the middle of it; float32 so that greedy
# tokens are comparable with transformers' float32 generate() (auto picks bfloat16 on CPUs that have it).
SERVE = ("--roles", "serve", "--model", MODEL, "--heartbeat-s", "0.5", "--peer-timeout-s", "3",
         "--set", "serving.slowdown_factor=4", "--set", "serving.dtype=float32")  # fmt: skip
PROMPTS = ["def fib(n):", "import os\n", "class A:", "hello world", "for i in range(10):"]


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[list[NodeProcess]]:
    workdir = tmp_path_factory.mktemp("serve")
    first = NodeProcess(workdir, "s0", list(SERVE)).wait_ready(timeout_s=120)
    rest = [NodeProcess(workdir, f"s{i}", [*SERVE, "--peer", first.addr]) for i in (1, 2)]
    nodes = [first, *(n.wait_ready(timeout_s=120) for n in rest)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def reference() -> dict[str, list[int]]:
    """Greedy completions from transformers generate() on the same embedded model."""
    loaded = load_model(MODEL)
    out = {}
    for prompt in PROMPTS:
        ids = torch.tensor([loaded.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            gen = loaded.hf_model.generate(ids, max_new_tokens=64, do_sample=False)
        out[prompt] = gen[0, ids.shape[1] :].tolist()
    return out


def _strip_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@pytest.fixture(scope="module")
def client(servers) -> Iterator[Client]:
    with Client(peers=[servers[0].addr], timeout_s=60) as c:
        c.wait_for_servers(3, model=MODEL, timeout_s=30)
        yield c


def test_twenty_concurrent_requests_are_spread_and_exact(client, servers, reference) -> None:
    eos = load_model(MODEL).tokenizer.eos_token_id
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_new_tokens=24, model=MODEL), jobs))
    used = set()
    for prompt, result in zip(jobs, results, strict=True):
        assert result.token_ids == _strip_eos(reference[prompt][:24], eos), prompt
        used.update(result.peers)
    assert len(used) >= 2, f"all requests went to {used}"
    assert used <= {s.peer_id for s in servers}


def test_client_is_not_listed_as_a_server(client, servers) -> None:
    rows = servers[0].peers()
    me = [r for r in rows if r["peer_id"] == client.peer_id]
    assert me and me[0]["roles"] == ["client"]
    assert client.peer_id not in {s.peer_id for s in client.servers()}


def test_bad_requests_get_typed_errors(client, servers) -> None:
    with pytest.raises(GenerationRefused) as info:
        client.generate("x", max_new_tokens=4, temperature=float("nan"), model=MODEL)
    assert info.value.field == "temperature"
    with Client(peers=[servers[0].addr], timeout_s=2) as other, pytest.raises(NoPeerAvailable, match="no-such-model"):
        other.generate("x", model="no-such-model", max_new_tokens=2)


def test_cli_generate_through_the_swarm(servers, reference) -> None:
    import json
    import subprocess
    import sys

    prompt = PROMPTS[2]
    out = subprocess.run(
        [sys.executable, "-m", "swarm", "generate", prompt, "--peer", servers[0].addr, "--model", MODEL,
         "--max-new-tokens", "12", "--json"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["token_ids"] == reference[prompt][:12]
    assert result["finish_reason"] == "length" and result["peers"]


def test_openai_package_against_a_node(servers, reference) -> None:
    api = openai.OpenAI(base_url=f"{servers[1].http}/v1", api_key="unused", max_retries=0)
    models = [m.id for m in api.models.list().data]
    assert models == ["swarm-embedded-tiny-seed0"]
    prompt = PROMPTS[0]
    completion = api.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    assert 0 < completion.usage.completion_tokens <= 24
    assert completion.usage.prompt_tokens == len(prompt.encode())
    assert completion.choices[0].finish_reason in ("stop", "length")
    streamed = "".join(
        chunk.choices[0].text
        for chunk in api.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True)
    )
    assert streamed == completion.choices[0].text
    chat = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                       temperature=0)  # fmt: skip
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens <= 8
    parts = [
        c.choices[0].delta.content or ""
        for c in api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=8, temperature=0, stream=True)
        if c.choices
    ]  # fmt: skip
    assert "".join(parts) == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model=MODEL, prompt="x", max_tokens=-3)


def test_vanishing_http_client_frees_the_request(servers) -> None:
    node = servers[2]
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", f"{node.http}/v1/completions", timeout=10, json=body) as response:
        for _ in zip(range(3), response.iter_lines(), strict=False):
            pass
    load = lambda: next(r for r in node.peers() if r["self"])["load"]["running"]  # noqa: E731
    wait_until(lambda: load() == 0, timeout_s=15, interval_s=0.1)


def test_kill9_mid_stream_resumes_with_identical_tokens(client, servers, reference) -> None:
    prompt = PROMPTS[1]
    eos = load_model(MODEL).tokenizer.eos_token_id
    expected = _strip_eos(reference[prompt], eos)
    by_id = {s.peer_id: s for s in servers}
    tokens, victims, peers_after_kill = [], [], []
    for delta in client.stream(prompt, max_new_tokens=64, model=MODEL):
        tokens.extend(delta.token_ids)
        if victims:
            peers_after_kill.append(delta.peer_id)
        if len(tokens) >= 4 and not victims:
            victims.append(by_id[delta.peer_id])
            victims[0].signal(signal.SIGKILL)
            time.sleep(0.2)
    assert victims, "the stream ended before a server could be killed"
    assert victims[0].proc.wait(timeout=30) == -signal.SIGKILL
    assert tokens == expected
    # Chunks the victim sent before the signal landed may still arrive after it; the answer ends on another peer.
    assert peers_after_kill and peers_after_kill[-1] != victims[0].peer_id
