"""The OpenAI surface real clients send, through a gateway node to a serving peer over the generate protocol:
the exact bodies of vLLM's `bench serve` (backends `openai` and `openai-chat`, current and older versions), and
the official `openai` package with n > 1, logprobs, seeds and penalties; fields we cannot honour are 400s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.integration.nodes import NodeProcess, wait_until

pytestmark = [pytest.mark.multipeer, pytest.mark.slow, pytest.mark.timeout(240)]

MODEL = "tiny"
PROMPT = "def fibonacci(n):\n    "
OUTPUT_LEN = 12


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """A serving peer, and a peer without a model whose HTTP API forwards to it (generate protocol 1.1)."""
    workdir = tmp_path_factory.mktemp("openai-surface")
    server = NodeProcess(workdir, "server", ["--roles", "serve", "--model", MODEL, "--heartbeat-s", "0.5",
                                             "--set", "serving.dtype=float32"]).wait_ready(timeout_s=120)  # fmt: skip
    gate = NodeProcess(workdir, "gateway", ["--peer", server.addr, "--heartbeat-s", "0.5"])
    try:
        gate.wait_ready(timeout_s=60)
        wait_until(lambda: httpx.get(f"{gate.http}/v1/models", timeout=5).json()["data"], timeout_s=30)
        yield gate, server
    finally:
        gate.stop()
        server.stop()


@pytest.fixture(scope="module")
def gateway(nodes: tuple[NodeProcess, NodeProcess]) -> NodeProcess:
    return nodes[0]


def _vllm_stream(url: str, payload: dict[str, Any], chat: bool) -> tuple[str, int, int]:
    """Read a streamed answer as vLLM's bench does: (generated text, content chunks, usage completion tokens)."""
    text, chunks, completion = "", 0, -1
    with httpx.stream("POST", url, json=payload, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line.removeprefix("data: "))
            if choices := data.get("choices"):
                part = choices[0]["delta"].get("content") if chat else choices[0].get("text")
                text += part or ""
                chunks += 1
            elif usage := data.get("usage"):
                completion = usage["completion_tokens"]
    return text, chunks, completion


def test_vllm_bench_serve_bodies_are_answered(gateway: NodeProcess) -> None:
    base = f"{gateway.http}/v1"
    reference = httpx.post(f"{base}/completions", timeout=60, json={
        "model": MODEL, "prompt": PROMPT, "max_tokens": OUTPUT_LEN, "temperature": 0, "ignore_eos": True,
    }).json()["choices"][0]["text"]  # fmt: skip
    # vllm/benchmarks/lib/endpoint_request_func.py, async_request_openai_completions, with --ignore-eos.
    completions = {
        "model": MODEL,
        "prompt": PROMPT,
        "repetition_penalty": 1.0,
        "max_tokens": OUTPUT_LEN,
        "logprobs": None,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    # benchmarks/backend_request_func.py of earlier vLLM releases, async_request_openai_completions.
    completions_old = {
        "model": MODEL,
        "prompt": PROMPT,
        "temperature": 0.0,
        "best_of": 1,
        "max_tokens": OUTPUT_LEN,
        "logprobs": None,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    for payload in (completions, completions_old):
        if "temperature" not in payload:
            payload = {**payload, "temperature": 0.0}  # vLLM's server defaults to greedy here; OpenAI's to 1
        text, chunks, completion = _vllm_stream(f"{base}/completions", payload, chat=False)
        assert text == reference
        assert completion == OUTPUT_LEN and chunks >= 2
    messages = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    # async_request_openai_chat_completions, current and earlier (which also sent temperature 0).
    chat = {
        "model": MODEL,
        "messages": messages,
        "max_completion_tokens": OUTPUT_LEN,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    chat_old = {
        "model": MODEL,
        "messages": messages,
        "temperature": 0.0,
        "max_completion_tokens": OUTPUT_LEN,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    texts = []
    for payload in (chat, chat_old):
        text, chunks, completion = _vllm_stream(f"{base}/chat/completions", payload, chat=True)
        assert 1 <= completion <= OUTPUT_LEN and chunks >= 2
        texts.append(text)
    assert completion == len(httpx.post(f"{base}/chat/completions", timeout=60, json={
        **chat_old, "stream": False, "logprobs": True}).json()["choices"][0]["logprobs"]["content"])  # fmt: skip


def test_openai_package_n_samples_and_logprobs(gateway: NodeProcess) -> None:
    api = openai.OpenAI(base_url=f"{gateway.http}/v1", api_key="unused", max_retries=0)
    greedy = api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=OUTPUT_LEN, temperature=0, n=4,
                                    logprobs=3, extra_body={"ignore_eos": True})  # fmt: skip
    assert [c.index for c in greedy.choices] == [0, 1, 2, 3]
    assert len({c.text for c in greedy.choices}) == 1
    assert greedy.usage is not None and greedy.usage.completion_tokens == 4 * OUTPUT_LEN
    lp = greedy.choices[0].logprobs
    # (Token strings are each token decoded alone: a byte of a multi-byte character shows as U+FFFD, as in vLLM.)
    assert lp is not None and len(lp.token_logprobs) == len(lp.tokens) == OUTPUT_LEN
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) <= 3 and max(top.values()) == pytest.approx(logprob)  # greedy: the sampled token is the best
        assert top.get(token, logprob) == pytest.approx(logprob)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]

    def sampled() -> list[Any]:
        return api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=16,
            n=3,
            temperature=1.0,
            seed=42,
            logprobs=True,
            top_logprobs=2,
        ).choices

    first, second = sampled(), sampled()
    assert [c.message.content for c in first] == [c.message.content for c in second]
    assert len({c.message.content for c in first}) > 1
    content = first[1].logprobs.content
    assert content and all(len(e.top_logprobs) == 2 and e.logprob <= 0 for e in content)
    # the same tokens; their log-probabilities to float noise (a cached prefix or another chunking sums differently)
    assert [e.logprob for e in content] == pytest.approx([e.logprob for e in second[1].logprobs.content], abs=1e-4)

    stream = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=16,
        n=3,
        temperature=1.0,
        seed=42,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: dict[int, str] = {}
    finished: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert [parts[i] for i in range(3)] == [c.message.content for c in first]
    assert sorted(finished) == [0, 1, 2]
    assert usage is not None and usage.completion_tokens == sum(len(c.logprobs.content) for c in first)


def test_penalties_apply_and_out_of_range_values_are_400s(gateway: NodeProcess) -> None:
    api = openai.OpenAI(base_url=f"{gateway.http}/v1", api_key="unused", max_retries=0)

    def run(**kw: Any) -> str:
        return api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, **kw).choices[0].text

    plain = run()
    assert run(presence_penalty=0, frequency_penalty=0) == plain
    assert run(frequency_penalty=2.0) != plain
    for kwargs, param in (
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"n": 0}, "n"),
        ({"logprobs": 25}, "logprobs"),
        ({"extra_body": {"tools": [{"type": "function", "function": {"name": "f"}}]}}, "tools"),
        ({"extra_body": {"response_format": {"type": "json_object"}}}, "response_format"),
    ):
        with pytest.raises(openai.BadRequestError) as info:
            api.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, **kwargs)
        assert info.value.body["param"] == param  # type: ignore[index]


def test_python_client_n_samples_and_logprobs(nodes: tuple[NodeProcess, NodeProcess]) -> None:
    from swarm.client import Client

    _, server = nodes
    with Client(peers=[server.addr]) as client:
        client.wait_for_servers(1, timeout_s=30)
        one = client.generate(PROMPT, model=MODEL, max_new_tokens=10, temperature=0.0, ignore_eos=True)
        group = client.generate(PROMPT, model=MODEL, max_new_tokens=10, n=4, temperature=1.0, seed=3, logprobs=1)
        again = client.generate(PROMPT, model=MODEL, max_new_tokens=10, n=4, temperature=1.0, seed=3, logprobs=1)
        greedy = client.generate(PROMPT, model=MODEL, max_new_tokens=10, n=2, ignore_eos=True)
        streamed: dict[int, list[int]] = {}
        for delta in client.stream(PROMPT, model=MODEL, max_new_tokens=10, n=4, temperature=1.0, seed=3):
            streamed.setdefault(delta.index, []).extend(delta.token_ids)
    assert [c.token_ids for c in group.choices] == [c.token_ids for c in again.choices]
    assert [streamed[i] for i in range(4)] == [c.token_ids for c in group.choices]
    assert len({tuple(c.token_ids) for c in group.choices}) > 1
    for c in group.choices:
        assert c.logprobs is not None and [e.token_id for e in c.logprobs] == c.token_ids
        assert all(len(e.top_ids) == 1 and e.logprob <= e.top_logprobs[0] + 1e-5 for e in c.logprobs)
    assert [c.token_ids for c in greedy.choices] == [one.token_ids] * 2
    assert greedy.usage["completion_tokens"] == 2 * len(one.token_ids)


def test_a_serving_node_answers_n_samples_from_its_own_engine(nodes: tuple[NodeProcess, NodeProcess]) -> None:
    gate, server = nodes
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "n": 3, "temperature": 1.0, "seed": 11, "logprobs": 1}
    local = httpx.post(f"{server.http}/v1/completions", json=body, timeout=60).json()
    remote = httpx.post(f"{gate.http}/v1/completions", json=body, timeout=60).json()
    assert [c["text"] for c in local["choices"]] == [c["text"] for c in remote["choices"]]
    for a, b in zip(local["choices"], remote["choices"], strict=True):  # (the second one's prompt was cached)
        assert a["logprobs"]["token_logprobs"] == pytest.approx(b["logprobs"]["token_logprobs"], abs=1e-4)
    assert local["usage"]["completion_tokens"] == sum(len(c["logprobs"]["tokens"]) for c in local["choices"])
