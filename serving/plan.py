"""The plain data that flows one way through a step: the scheduler's plan and what the runner sampled.

`schedule() -> SchedulerOutput`, `runner.execute(output) -> sampled`, `scheduler.update(output, sampled)`.
These are dataclasses only: they know nothing about how plans are made or run.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingSpec:
    """How to pick the next token of one request. temperature 0: greedy. logprobs: None, or how many top
    alternatives to report beside the sampled token's log-probability."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


@dataclass
class ScheduledChunk:
    """Tokens of one request computed this step: positions start_pos .. start_pos + len(token_ids) - 1.

    `block_table` covers every position up to the chunk's end. `sample` is True when the chunk ends at the last
    known token, so the runner samples the request's next token from it. `forks`: further samples drawn from the
    same last row (a request's n samples, forked at the end of its prompt), by request id. `history`: the
    request's prompt and output ids, given only when penalties need them.
    """

    request_id: str
    token_ids: list[int]
    start_pos: int
    block_table: list[int]
    sample: bool
    sampling: SamplingSpec
    forks: list[tuple[str, SamplingSpec]] = field(default_factory=list)
    history: tuple[list[int], list[int]] | None = None

    @property
    def is_decode(self) -> bool:
        return len(self.token_ids) == 1 and self.start_pos > 0


@dataclass
class SchedulerOutput:
    """One step's plan. `released_request_ids`: requests gone since the last plan (runner drops their state).
    `block_copies`: (src, dst) KV blocks to copy before the step writes anything (copy-on-write of a fork)."""

    chunks: list[ScheduledChunk] = field(default_factory=list)
    released_request_ids: list[str] = field(default_factory=list)
    predicted_step_s: float = 0.0
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)

    @property
    def is_empty(self) -> bool:
        return not self.chunks
