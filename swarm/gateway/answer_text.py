"""The text of a remote answer, decoded by the asker from every token id it received, whichever peers made them.

A peer's own text deltas do not survive a failover: the dead peer may hold text back (an incomplete UTF-8
character, what may be the start of a stop string), and a stop string may span the switch of peers. So the asker
runs its own incremental detokenizer over the ids, one at a time, exactly as one server would. Knows tokenizers,
prompts and stop strings; nothing about peers or streams.
"""

from __future__ import annotations

import functools
from typing import Any

from protocols import GenerateRequest, ProtocolError
from serving.detokenizer import Decoder, IncrementalDetokenizer
from swarm.gateway.generation import prompt_ids_of
from swarm.gateway.routing import EMBEDDED_PREFIX


class AnswerText:
    """Text of one answer's ids; stops at the first stop string as the serving engine does."""

    def __init__(self, tokenizer: Decoder, prompt_ids: list[int], stop: list[str]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_ids, stop)

    @property
    def stopped(self) -> bool:
        return self._detok.stopped

    def add(self, token_ids: list[int]) -> tuple[str, int]:
        """Take ids in order; return the text now safe to show and how many ids were taken. Fewer than given
        when a stop string ends the answer: the engine stops at the token that completes it, and so does this."""
        if self.stopped:
            return "", 0
        parts = []
        for taken, token_id in enumerate(token_ids, start=1):
            parts.append(self._detok.add([token_id]))
            if self._detok.stopped:
                return "".join(parts), taken
        return "".join(parts), len(token_ids)

    def finish(self) -> str:
        """The text held back until now: the answer is complete."""
        return self._detok.finish()


@functools.cache
def _byte_tokenizer() -> Any:
    from serving.model import build_byte_tokenizer

    return build_byte_tokenizer()


def tokenizer_for(model_id: str, model_hash: str, local_engine: Any, given: Decoder | None) -> Decoder | None:
    """A tokenizer for the answer's model: this node's engine's if it has the same weights, the byte tokenizer
    every embedded model uses, else the one the asker was given; None when there is none."""
    if local_engine is not None and local_engine.model_hash == model_hash:
        return local_engine.tokenizer
    if model_id.startswith(EMBEDDED_PREFIX):
        return _byte_tokenizer()
    return given


def answer_text(tokenizer: Decoder, request: GenerateRequest) -> AnswerText:
    """The decoder of ``request``'s answer, with the prompt as the server sees it (its last ids give context)."""
    try:
        prompt_ids = prompt_ids_of(tokenizer, request)
    except ProtocolError:  # a chat template only the server can apply: decode without the prompt's context
        prompt_ids = []
    return AnswerText(tokenizer, prompt_ids, list(request.stop))
