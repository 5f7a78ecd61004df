"""OpenAI request bodies turned into GenerateRequests: hostile or malformed fields are 400s naming the field."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from protocols import GenerateRequest, PeerAnnounce
from swarm.gateway.dispatch import GenerationResult
from swarm.runtime.config import build_config
from swarm.web.openai_api import ApiError, OpenAIApi, build_request

BASE = {"model": "tiny", "prompt": "x"}


@pytest.mark.parametrize(
    ("body", "chat", "param"),
    [
        ({**BASE, "max_tokens": "9"}, False, "max_tokens"),
        ({**BASE, "max_tokens": 0}, False, "max_new_tokens"),
        ({**BASE, "temperature": float("nan")}, False, "temperature"),
        ({**BASE, "priority": 1.5}, False, "priority"),
        ({**BASE, "priority": True}, False, "priority"),
        ({**BASE, "stop": [1]}, False, "stop"),
        ({**BASE, "n": 0}, False, "n"),
        ({**BASE, "n": 17}, False, "n"),
        ({**BASE, "n": "2"}, False, "n"),
        ({**BASE, "n": float("nan")}, False, "n"),
        ({**BASE, "logit_bias": {"5": 10}}, False, "logit_bias"),
        ({**BASE, "tools": [{"type": "function", "function": {"name": "f"}}]}, False, "tools"),
        ({**BASE, "response_format": {"type": "json_object"}}, False, "response_format"),
        ({**BASE, "best_of": 3}, False, "best_of"),
        ({**BASE, "echo": True}, False, "echo"),
        ({**BASE, "logprobs": 21}, False, "logprobs"),
        ({**BASE, "logprobs": -1}, False, "logprobs"),
        ({**BASE, "presence_penalty": 2.5}, False, "presence_penalty"),
        ({**BASE, "frequency_penalty": float("nan")}, False, "frequency_penalty"),
        ({**BASE, "frequency_penalty": float("-inf")}, False, "frequency_penalty"),
        ({**BASE, "repetition_penalty": 0}, False, "repetition_penalty"),
        ({**BASE, "ignore_eos": "yes"}, False, "ignore_eos"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, True, "top_logprobs"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
            True,
            "top_logprobs",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": 2}, True, "logprobs"),
        ({"prompt": "x"}, False, "model"),
        ({**BASE, "prompt": "a\ud800b"}, False, "prompt"),
        ({**BASE, "stop": ["\udfff"]}, False, "stop"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "\ud800"}]}, True, "messages"),
        ({**BASE, "seed": 2**64}, False, "seed"),
        ({**BASE, "max_tokens": 2**63}, False, "max_tokens"),
        ({"model": "tiny", "prompt": ""}, False, "prompt"),
        ({"model": "tiny", "messages": "hi"}, True, "messages"),
        ({"model": "tiny", "messages": ["hi"]}, True, "messages"),
        ({"model": "tiny", "messages": [{"role": "user", "content": [3]}]}, True, "messages"),
        ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, True, "messages"),
        ({"model": "tiny", "messages": [{"role": "user"}]}, True, "messages"),
    ],
)
def test_malformed_fields_are_400_naming_the_field(body: dict[str, Any], chat: bool, param: str) -> None:
    with pytest.raises(ApiError) as info:
        build_request(body, chat=chat)
    assert (info.value.status, info.value.param) == (400, param)


NEUTRAL_FIELDS = {
    "logprobs": None, "presence_penalty": 0, "frequency_penalty": 0.0, "repetition_penalty": 1.0, "tools": [],
    "tool_choice": "none", "response_format": {"type": "text"}, "stream_options": {"include_usage": False},
    "max_completion_tokens": 7, "user": "someone", "ignore_eos": False, "logit_bias": {}, "best_of": 1,
    "echo": False, "min_p": 0, "some_future_field": {"anything": [1, 2]},
}  # fmt: skip


def test_neutral_and_unknown_fields_are_accepted_and_change_nothing() -> None:
    plain = build_request({**BASE, "max_tokens": 7}, chat=False)
    loaded = build_request({**BASE, **NEUTRAL_FIELDS}, chat=False)
    same = {k: v for k, v in vars(loaded).items() if k != "request_id"}
    assert same == {k: v for k, v in vars(plain).items() if k != "request_id"}
    assert (loaded.n, loaded.logprobs, loaded.max_new_tokens, loaded.ignore_eos) == (1, None, 7, False)


def test_honoured_fields_reach_the_generate_request() -> None:
    body = {**BASE, "n": 3, "logprobs": 2, "presence_penalty": -1.5, "frequency_penalty": 0.5,
            "repetition_penalty": 1.2, "ignore_eos": True, "seed": 9, "temperature": 0.7}  # fmt: skip
    gen = build_request(body, chat=False)
    assert (gen.n, gen.logprobs, gen.presence_penalty, gen.frequency_penalty) == (3, 2, -1.5, 0.5)
    assert (gen.repetition_penalty, gen.ignore_eos, gen.seed, gen.temperature) == (1.2, True, 9, 0.7)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 4}
    assert build_request(chat, chat=True).logprobs == 4
    assert build_request({**chat, "top_logprobs": None}, chat=True).logprobs == 0
    assert build_request({**chat, "logprobs": False, "top_logprobs": 0}, chat=True).logprobs is None
    assert build_request({**BASE, "prompt": [[5, 6, 7]]}, chat=False).prompt_token_ids == [5, 6, 7]


class _Dispatch:
    """Stands in for SwarmGenerator: one server of "tiny", and records what the gateway would send."""

    def __init__(self) -> None:
        self.sent: list[GenerateRequest] = []

    def servers(self, model: str | None) -> list[PeerAnnounce]:
        return [PeerAnnounce(peer_id="p", addrs=[], version="t", timestamp_ms=0, roles=["serve"],
                             model_id="swarm-embedded-tiny-seed0")]  # fmt: skip

    async def generate(self, request: GenerateRequest) -> GenerationResult:
        self.sent.append(request)
        return GenerationResult("ok", [1], "length", ["p"], {"prompt_tokens": 1, "completion_tokens": 1}, {}, "r")


async def test_the_gateway_clamps_priority_before_sending() -> None:
    config = build_config({"serving": {"min_priority": -1, "max_priority": 3}})
    api = OpenAIApi(SimpleNamespace(config=config))
    api.dispatch = _Dispatch()  # type: ignore[assignment]
    transport = httpx.ASGITransport(app=Starlette(routes=api.routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        for priority in (10**30, -(10**30), 2):
            response = await http.post("/v1/completions", json={**BASE, "priority": priority})
            assert response.status_code == 200 and response.json()["choices"][0]["text"] == "ok"
    assert [r.priority for r in api.dispatch.sent] == [3, -1, 2]
