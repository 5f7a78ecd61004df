"""The engine driven from a trio event loop, as the node drives it: submits on the loop, events come back
through `run_sync_soon` into a memory channel (the sink never blocks the engine thread)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from serving.config import ServingConfig
from serving.engine import Engine
from serving.request import DoneEvent, GenerateParams, TokenEvent


@pytest.mark.timeout(60)
async def test_streams_from_a_trio_loop_equal_the_synchronous_result(tmp_path: Path) -> None:
    config = ServingConfig(
        model="tiny", dtype="float32", num_threads=1, latency_profile_path=str(tmp_path / "latency.json")
    )
    engine = Engine(config)
    await trio.to_thread.run_sync(engine.start)
    try:
        prompts = [[(5 * i + j) % 250 for j in range(10 + 7 * i)] for i in range(4)]
        expected = [engine.generate(GenerateParams(prompt_token_ids=p, max_new_tokens=12)).token_ids for p in prompts]
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel(1000)
        for i, p in enumerate(prompts):
            params = GenerateParams(prompt_token_ids=p, max_new_tokens=12, request_id=f"t{i}")
            engine.submit(params, lambda event: token.run_sync_soon(send.send_nowait, event))
        streamed: dict[str, list[int]] = {f"t{i}": [] for i in range(len(prompts))}
        done = 0
        with trio.fail_after(30):
            async for event in receive:
                if isinstance(event, TokenEvent):
                    streamed[event.request_id].extend(event.token_ids)
                elif isinstance(event, DoneEvent):
                    done += 1
                    if done == len(prompts):
                        break
        assert [streamed[f"t{i}"] for i in range(len(prompts))] == expected
    finally:
        await trio.to_thread.run_sync(engine.stop)
