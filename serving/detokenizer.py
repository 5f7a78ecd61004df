"""Incremental detokenization with stop strings: token ids in, text deltas out.

Decodes a sliding window of ids so each step costs a few tokens of work; text that might be the start of a
stop string or a partial UTF-8 character is held back until it is known. This module knows nothing about
scheduling or models: only a tokenizer's `decode`.
"""

from __future__ import annotations

from typing import Protocol

PROMPT_CONTEXT_TOKENS = 6  # some tokenizers decode a word differently without what came before it
REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Text of one request's generated tokens, delivered as deltas; stops at the first stop string."""

    def __init__(self, tokenizer: Decoder, prompt_ids: list[int], stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self._ids = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self.text = ""  # all generated text known so far (stop string excluded once found)
        self._emitted = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, new_ids: list[int]) -> str:
        """Take new token ids; return the text now safe to emit. Sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        self._ids.extend(new_ids)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            start = len(self.text)
            self.text += full[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            self._check_stop(start)
        return self._take(final=self.stopped)

    def finish(self) -> str:
        """Everything not emitted yet at the end of the request: held-back characters, and a trailing
        incomplete UTF-8 sequence as replacement characters (the bytes will not be completed now)."""
        if not self.stopped:
            prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
            full = self._decode(self._ids[self._prefix_offset :])
            if len(full) > len(prefix):
                start = len(self.text)
                self.text += full[len(prefix) :]
                self._check_stop(start)
        return self._take(final=True)

    def _check_stop(self, start: int) -> None:
        if not self.stop:
            return
        search_from = max(0, start - self._hold)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def _take(self, final: bool) -> str:
        end = len(self.text) if final else max(self._emitted, len(self.text) - self._hold)
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta
