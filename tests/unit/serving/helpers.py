"""Helpers of the serving tests: a tiny engine config and a sink that collects events."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from serving.config import ServingConfig
from serving.engine import Engine
from serving.request import DoneEvent, EngineEvent, GenerateParams, TokenEvent


def tiny_config(tmp_path: Path, **overrides: object) -> ServingConfig:
    fields: dict[str, object] = dict(
        model="tiny",
        dtype="float32",
        num_threads=1,
        latency_profile_path=str(tmp_path / "latency.json"),
        kv_cache_bytes=8 << 20,
    )
    fields.update(overrides)
    return ServingConfig(**fields)


class Collector:
    """A sink that records every event and signals when each request is done. `tokens` and `text` are choice
    0's; `choices` holds every choice's tokens by (request id, index)."""

    def __init__(self) -> None:
        self.tokens: dict[str, list[int]] = {}
        self.choices: dict[tuple[str, int], list[int]] = {}
        self.text: dict[str, str] = {}
        self.done: dict[str, DoneEvent] = {}
        self._lock = threading.Lock()

    def __call__(self, event: EngineEvent) -> None:
        with self._lock:
            if isinstance(event, TokenEvent):
                self.choices.setdefault((event.request_id, event.index), []).extend(event.token_ids)
                if event.index:
                    return
                self.tokens.setdefault(event.request_id, []).extend(event.token_ids)
                self.text[event.request_id] = self.text.get(event.request_id, "") + event.text
            else:
                self.done[event.request_id] = event

    def wait(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(i in self.done for i in ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.done)}/{len(ids)} requests done")
            time.sleep(0.005)


def run_all(engine: Engine, params: list[GenerateParams], timeout_s: float = 60) -> Collector:
    """Submit every request at once and wait until all are done."""
    sink = Collector()
    for p in params:
        engine.submit(p, sink)
    sink.wait([p.request_id for p in params], timeout_s)
    return sink
