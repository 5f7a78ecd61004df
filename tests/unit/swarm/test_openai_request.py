"""OpenAI request bodies turned into GenerateRequests: hostile or malformed fields are 400s naming the field."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from protocols import GenerateRequest, PeerAnnounce
from swarm.config import build_config
from swarm.dispatch import GenerationResult
from swarm.openai_api import ApiError, OpenAIApi, build_request

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
        ({**BASE, "n": 2}, False, "n"),
        ({**BASE, "logit_bias": {}}, False, "logit_bias"),
        ({"prompt": "x"}, False, "model"),
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
