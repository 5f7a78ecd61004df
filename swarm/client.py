"""The Python client: remote generation through the swarm.

`Client(peers=[multiaddr])` joins as a client-only peer (it serves nothing and is never routed to), learns the
serving peers from gossip, sends each request to the peer with the best predicted TTFT for the model, moves on
when a peer answers OVERLOADED, and when a peer dies mid-stream resumes on another peer serving the same weights
(model hash) from the prompt plus the tokens already received, so the caller sees one continuous answer. The
client decodes the text from all the token ids itself (embedded models, or any model given ``tokenizer=``), so no
text is lost at the switch and stop strings that span it still end the answer.

    from swarm.client import Client
    with Client(peers=["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."]) as client:
        print(client.generate("def fib(n):", max_new_tokens=32).text)
        group = client.generate("def fib(n):", max_new_tokens=32, n=4, temperature=1.0, seed=0, logprobs=0)
        print([(c.text, sum(t.logprob for t in c.logprobs)) for c in group.choices])
        for delta in client.stream("import os", max_new_tokens=16):
            print(delta.text, end="")

`AsyncClient` is the same under trio (`async with AsyncClient(...)`, `await generate`, `async for ... in stream`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from protocols import PeerAnnounce
from swarm.gateway.dispatch import (
    GeneratedChoice,
    GenerationRefused,
    GenerationResult,
    NoPeerAvailable,
    Progress,
    ResumeUnavailable,
    SwarmGenerator,
    TokenDelta,
)
from swarm.runtime.config import NodeConfig, build_config

__all__ = ["AsyncClient", "Client", "GeneratedChoice", "GenerationRefused", "GenerationResult", "NoPeerAvailable",
           "ResumeUnavailable", "TokenDelta"]  # fmt: skip


def client_config(peers: list[str], swarm_key: Path | None, swarm_id: str, **network: Any) -> NodeConfig:
    return build_config(
        {"network": {"peers": list(peers), "swarm_key": swarm_key, "swarm_id": swarm_id,
                     "listen": ["/ip4/127.0.0.1/tcp/0"], **network}}
    )  # fmt: skip


class AsyncClient:
    """Remote generation under trio. Use as ``async with AsyncClient(peers=[...]) as client``."""

    def __init__(
        self,
        peers: list[str],
        *,
        swarm_id: str = "default",
        swarm_key: Path | None = None,
        timeout_s: float = 120.0,
        stall_timeout_s: float = 30.0,
        routing: str = "ttft",
        network: dict[str, Any] | None = None,
        tokenizer: Any = None,
    ) -> None:
        """``tokenizer``: a checkpoint directory (or a loaded tokenizer) to decode answers of a model that is not
        embedded; without one, such answers keep the serving peers' own text."""
        from swarm.runtime.node import Node

        if isinstance(tokenizer, str | Path):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.node = Node(client_config(peers, swarm_key, swarm_id, **(network or {})), client_only=True)
        self.dispatch = SwarmGenerator(
            self.node, timeout_s=timeout_s, stall_timeout_s=stall_timeout_s, routing=routing, tokenizer=tokenizer
        )
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> AsyncClient:
        self._stack = AsyncExitStack()
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        await nursery.start(self.node.run)
        self._stack.callback(self.node.stop)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        await self._stack.aclose()

    def servers(self, model: str | None = None) -> list[PeerAnnounce]:
        """Serving peers known now, best first for ``model``."""
        return self.dispatch.servers(model)

    async def wait_for_servers(self, count: int = 1, model: str | None = None, timeout_s: float = 30.0) -> None:
        with trio.fail_after(timeout_s):
            while len(self.servers(model)) < count:
                await trio.sleep(0.1)

    async def generate(self, prompt: str | None = None, **kwargs: Any) -> GenerationResult:
        """Generate a whole answer. Keyword arguments are GenerateRequest fields (max_new_tokens, temperature,
        top_k, top_p, seed, stop, ttft_ms, tpot_ms, priority, model, messages, prompt_token_ids, n, logprobs,
        presence_penalty, frequency_penalty, repetition_penalty, ignore_eos). With ``n`` > 1 the n samples share
        one prompt prefill on the serving peer and come back in ``result.choices``; ``logprobs=k`` gives each
        token's log-probability and its k most likely alternatives (``choice.logprobs``)."""
        return await self.dispatch.generate(self.dispatch.request(prompt, kwargs))

    async def stream(self, prompt: str | None = None, **kwargs: Any) -> AsyncIterator[TokenDelta]:
        """Yield the answer as it is produced (with ``n`` > 1, each delta's ``index`` names its sample)."""
        async for delta in self.dispatch.run(self.dispatch.request(prompt, kwargs), Progress()):
            yield delta


class Client:
    """The synchronous client: runs an AsyncClient on its own trio loop in a background thread.

    Use as a context manager, or call ``close()`` when done.
    """

    def __init__(self, peers: list[str], *, start_timeout_s: float = 30.0, **kwargs: Any) -> None:
        import queue
        import threading

        self._async = AsyncClient(peers, **kwargs)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready: queue.Queue[BaseException | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), name="swarm-client", daemon=True)
        self._thread.start()
        try:
            error = self._ready.get(timeout=start_timeout_s)
        except queue.Empty:
            raise NoPeerAvailable(f"client did not start within {start_timeout_s} s") from None
        if error is not None:
            raise error

    async def _main(self) -> None:
        self._stop = trio.Event()
        try:
            async with self._async, trio.open_nursery() as nursery:
                self._token = trio.lowlevel.current_trio_token()
                self._nursery = nursery
                self._ready.put(None)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        except BaseException as err:  # surfaced to the constructor if startup failed
            self._ready.put(err)
            raise

    def _call(self, fn: Any, *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    @property
    def peer_id(self) -> str:
        return self._async.node.peer_id

    def servers(self, model: str | None = None) -> list[PeerAnnounce]:
        return trio.from_thread.run_sync(self._async.servers, model, trio_token=self._token)

    def wait_for_servers(self, count: int = 1, model: str | None = None, timeout_s: float = 30.0) -> None:
        self._call(self._async.wait_for_servers, count, model, timeout_s)

    def generate(self, prompt: str | None = None, **kwargs: Any) -> GenerationResult:
        return self._call(lambda: self._async.generate(prompt, **kwargs))

    def stream(self, prompt: str | None = None, **kwargs: Any) -> Any:
        """Yield TokenDelta objects as they arrive; leaving the loop early cancels the request."""
        import queue

        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        scope = trio.CancelScope()

        async def _pump() -> None:
            with scope:
                try:
                    async for delta in self._async.stream(prompt, **kwargs):
                        items.put(("delta", delta))
                    items.put(("end", None))
                except Exception as err:
                    items.put(("error", err))
            items.put(("end", None))

        trio.from_thread.run_sync(self._nursery.start_soon, _pump, trio_token=self._token)  # type: ignore[union-attr]
        try:
            while True:
                kind, value = items.get()
                if kind == "delta":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            if not self._closed.is_set():
                trio.from_thread.run_sync(scope.cancel, trio_token=self._token)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=10)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
