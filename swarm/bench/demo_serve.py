"""The demo's serving and RL phases, as a user would drive them: an answer streamed through the OpenAI API (HTTP,
server-sent events) and one through the Python client, each with its time to first token; RL nodes followed
through the one JSON line per round each writes. Knows HTTP, the client and the RL round log; not the nodes.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# Sampled from the model as it is (seeded): greedy decoding of a briefly trained byte model repeats itself and
# never reaches a line's end, and a lower temperature makes the rarer newline rarer still.
TEMPERATURE = 1.0
SUCCESS = re.compile(r"^vllm:request_success_total\{[^}]*\} (\S+)$", re.MULTILINE)


@dataclass
class Answer:
    """One served answer and how it came back."""

    via: str
    prompt: str
    text: str
    finish_reason: str
    ttft_ms: float | None
    total_ms: float
    peer: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"via": self.via, "prompt": self.prompt, "text": self.text, "finish_reason": self.finish_reason,
                "ttft_ms": self.ttft_ms, "total_ms": round(self.total_ms, 1), "peer": self.peer}  # fmt: skip


def model_ids(http: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{http}/v1/models", timeout=10.0).json()["data"]]


def openai_stream(http: str, model: str, prompt: str, max_tokens: int, stop: list[str], timeout_s: float) -> Answer:
    """POST /v1/completions with stream=true; the TTFT is the wait until the first chunk that carries text."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stop": stop, "temperature": TEMPERATURE,
            "seed": 0, "stream": True}  # fmt: skip
    started = time.monotonic()
    first: float | None = None
    text, reason = [], ""
    with httpx.stream("POST", f"{http}/v1/completions", json=body, timeout=timeout_s) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"/v1/completions answered {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[len("data: ") :]).get("choices", []):
                if choice.get("text") and first is None:
                    first = time.monotonic()
                text.append(choice.get("text") or "")
                reason = choice.get("finish_reason") or reason
    ttft = None if first is None else 1000 * (first - started)
    return Answer("OpenAI API (HTTP)", prompt, "".join(text), reason, ttft, 1000 * (time.monotonic() - started))


def client_generate(
    peers: list[str], checkpoint: Path, prompt: str, max_tokens: int, stop: list[str], timeout_s: float
) -> Answer:
    """The Python client joins the swarm as a client-only peer and asks the best serving peer; it decodes with the
    checkpoint's tokenizer."""
    from swarm.client import Client

    with Client(peers=peers, network={"heartbeat_s": 1.0}, tokenizer=str(checkpoint)) as client:
        client.wait_for_servers(1, timeout_s=timeout_s)
        asked = time.monotonic()
        result = client.generate(prompt, max_new_tokens=max_tokens, stop=stop, temperature=TEMPERATURE, seed=0)
    ttft = result.timings.get("ttft_ms")
    total_ms = 1000 * (time.monotonic() - asked)
    answer = Answer("Python client (swarm.client)", prompt, result.text, result.finish_reason, ttft, total_ms)
    answer.peer = result.peers[0] if result.peers else ""
    return answer


def served_requests(http: str) -> int:
    """Finished requests of a serving node, whatever their finish reason (its `/metrics`)."""
    text = httpx.get(f"{http}/metrics", timeout=10.0).text
    return int(sum(float(v) for v in SUCCESS.findall(text)))


@dataclass
class RlProgress:
    """One RL node's round log: a JSON line per round (reward, groups received from peers, groups used)."""

    path: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def poll(self) -> None:
        if self.path.exists():
            lines = [ln for ln in self.path.read_text().splitlines() if ln.strip()]
            self.rounds = [json.loads(ln) for ln in lines]

    @property
    def last(self) -> dict[str, Any]:
        return self.rounds[-1] if self.rounds else {}


def reward_curve(nodes: list[RlProgress]) -> dict[int, float]:
    """Mean own-rollout reward per round over the nodes that logged it."""
    by_round: dict[int, list[float]] = {}
    for node in nodes:
        for row in node.rounds:
            by_round.setdefault(int(row["round"]), []).append(float(row["mean_reward"]))
    return {r: sum(v) / len(v) for r, v in sorted(by_round.items())}
