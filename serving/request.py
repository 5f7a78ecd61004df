"""What a caller asks for (`GenerateParams`), what it gets back (events, `GenerateResult`), and a request's state.

Validation here refuses bad input with `BAD_REQUEST` naming the field, before anything touches the batch.
This module knows nothing about models, tokenizers or scheduling policy: the engine tokenizes, the scheduler
moves `Request` objects between its queues.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Literal

from protocols.errors import ErrorCode, ProtocolError

FinishReason = Literal["stop", "length", "cancelled", "error"]
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_REQUEST_ID_CHARS = 128
MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs
PENALTY_LIMIT = 2.0  # OpenAI's bound on |presence_penalty| and |frequency_penalty|
MAX_REPETITION_PENALTY = 100.0
CHOICE_SEPARATOR = "\x00"  # request ids of a request's extra samples: f"{request_id}\x00{index}"


def _bad(field_name: str, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message, field=field_name)


@dataclass
class GenerateParams:
    """One generation request. Exactly one of `prompt` / `prompt_token_ids` is given.

    temperature 0 is greedy; top_k 0 and top_p 1 disable those filters; ttft_ms / tpot_ms are the caller's SLO
    targets (None: no target); higher priority runs first. `n` samples share the prompt (prefilled once); with a
    seed, sample i draws from seed + i. `logprobs`: None for none, else how many top alternatives (0..20) to
    report beside each sampled token's log-probability. Penalties follow OpenAI (presence, frequency: over the
    output so far) and vLLM/HF (repetition: divides positive logits of prompt and output tokens, multiplies
    negative ones); 0, 0 and 1 are neutral. `ignore_eos` generates through end-of-sequence tokens.
    A request with a negative priority and no TTFT/TPOT target is offline work (rollouts): it runs after the online
    requests of each step, earliest `deadline_ms` (from arrival) first.
    """

    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    priority: int = 0
    request_id: str = ""
    n: int = 1
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    deadline_ms: float | None = None

    @property
    def offline(self) -> bool:
        return self.priority < 0 and self.ttft_ms is None and self.tpot_ms is None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateParams:
        """Build from a decoded message; an unknown key (e.g. a sampling parameter we lack) is refused."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise _bad(str(key), f"unknown parameter {key!r}")
        return cls(**data)

    def validate(self, max_new_tokens_limit: int, max_n: int = 1) -> None:
        """Raise BAD_REQUEST naming the first invalid field; the prompt's length is checked by the engine."""
        self._validate_prompt()
        self._validate_sampling()
        self._validate_choices(max_n)
        if not _is_int(self.max_new_tokens) or not 0 < self.max_new_tokens <= max_new_tokens_limit:
            raise _bad("max_new_tokens", f"must be an integer in 1..{max_new_tokens_limit}")
        for name in ("ttft_ms", "tpot_ms", "deadline_ms"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
                raise _bad(name, "must be a positive finite number of milliseconds or None")
        if not _is_int(self.priority) or abs(self.priority) > 2**31:
            raise _bad("priority", "must be an integer")
        if not isinstance(self.request_id, str) or len(self.request_id) > MAX_REQUEST_ID_CHARS:
            raise _bad("request_id", f"must be a string of at most {MAX_REQUEST_ID_CHARS} characters")
        if CHOICE_SEPARATOR in self.request_id:
            raise _bad("request_id", "must not contain NUL characters")
        if not self.request_id:
            self.request_id = uuid.uuid4().hex

    def _validate_prompt(self) -> None:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise _bad("prompt", "give exactly one of prompt and prompt_token_ids")
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt):
            raise _bad("prompt", "must be a non-empty string")
        if self.prompt_token_ids is not None:
            ids = self.prompt_token_ids
            if not isinstance(ids, list) or not ids or not all(_is_int(t) and t >= 0 for t in ids):
                raise _bad("prompt_token_ids", "must be a non-empty list of non-negative integers")

    def _validate_sampling(self) -> None:
        t = self.temperature
        if not _is_number(t) or not math.isfinite(t) or not 0 <= t <= 100:
            raise _bad("temperature", "must be a finite number in [0, 100]")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise _bad("top_k", "must be a non-negative integer (0 disables)")
        p = self.top_p
        if not _is_number(p) or not math.isfinite(p) or not 0 < p <= 1:
            raise _bad("top_p", "must be in (0, 1]")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise _bad("seed", "must be a non-negative 64-bit integer or None")
        stop = self.stop
        if not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS:
            raise _bad("stop", f"must be a list of at most {MAX_STOP_STRINGS} strings")
        if not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop):
            raise _bad("stop", f"each stop string must have 1..{MAX_STOP_CHARS} characters")

    def _validate_choices(self, max_n: int) -> None:
        if not _is_int(self.n) or not 1 <= self.n <= max_n:
            raise _bad("n", f"must be an integer in 1..{max_n}")
        if self.logprobs is not None and (not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            raise _bad("logprobs", f"must be None or an integer in 0..{MAX_TOP_LOGPROBS}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or not -PENALTY_LIMIT <= value <= PENALTY_LIMIT:
                raise _bad(name, f"must be a finite number in [-{PENALTY_LIMIT:g}, {PENALTY_LIMIT:g}]")
        r = self.repetition_penalty
        if not _is_number(r) or not math.isfinite(r) or not 0 < r <= MAX_REPETITION_PENALTY:
            raise _bad("repetition_penalty", f"must be a finite number in (0, {MAX_REPETITION_PENALTY:g}]")
        if not isinstance(self.ignore_eos, bool):
            raise _bad("ignore_eos", "must be a boolean")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class TokenLogprob:
    """Log-probability of a sampled token under the model's raw distribution (log_softmax of its logits, before
    temperature, penalties and top-k/top-p), and the `top` most likely tokens with theirs, best first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class TokenEvent:
    """New tokens of one choice (`index` < n) of a request and the text they complete (text may lag by a partial
    UTF-8 character). `logprobs`: one entry per token when the request asked for them."""

    request_id: str
    token_ids: list[int]
    text: str
    index: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class DoneEvent:
    """Last event of a request, once every choice ended. usage: prompt_tokens, completion_tokens (all choices);
    timings: ttft/tpot/e2e/queue ms (of choice 0); `finish_reasons`: one per choice."""

    request_id: str
    finish_reason: FinishReason
    usage: dict[str, int]
    timings: dict[str, float]
    error: str | None = None
    finish_reasons: list[FinishReason] = field(default_factory=list)


EngineEvent = TokenEvent | DoneEvent


@dataclass
class Choice:
    """One of the n samples of a request."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerateResult:
    """Everything one synchronous generation produced; text, token_ids and finish_reason are choice 0's."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: dict[str, int]
    timings: dict[str, float]
    error: str | None = None
    choices: list[Choice] = field(default_factory=list)


class RequestStatus(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """Scheduler-side state of one admitted request (token ids only)."""

    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    params: GenerateParams
    arrival_s: float
    eos_token_ids: frozenset[int] = frozenset()
    output_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_inflight_tokens: int = 0  # scheduled in the step now running, not yet counted as computed
    block_table: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    predicted_ttft_s: float | None = None  # raw queue-model prediction at admission (SLO admission only)
    expected_ttft_s: float | None = None  # the prediction admission judged it by (raw x learnt correction)
    index: int = 0  # which of the request's n samples this is; samples > 0 are forked from sample 0
    parent_id: str = ""  # the caller's request id ("" for sample 0: its own)
    block_hashes: list[bytes] = field(default_factory=list)  # chained content hashes of its full blocks so far
    num_registered_blocks: int = 0  # leading blocks whose hash is registered in the prefix cache

    @property
    def caller_id(self) -> str:
        """The request id the caller knows this sample by."""
        return self.parent_id or self.request_id

    @property
    def priority(self) -> int:
        return self.params.priority

    @property
    def offline(self) -> bool:
        return self.params.offline

    @property
    def deadline_s(self) -> float:
        """When this request should be done, on the scheduler's clock (inf: no deadline)."""
        d = self.params.deadline_ms
        return math.inf if d is None else self.arrival_s + d / 1000.0

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what the KV cache must hold once all are computed."""
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens whose KV is not computed yet (1 while decoding, more while (re)filling the prompt)."""
        return self.num_tokens - self.num_computed_tokens

    def token_at(self, position: int) -> int:
        n = len(self.prompt_ids)
        return self.prompt_ids[position] if position < n else self.output_ids[position - n]

    def tokens_between(self, start: int, end: int) -> list[int]:
        n = len(self.prompt_ids)
        if end <= n:
            return self.prompt_ids[start:end]
        return (self.prompt_ids + self.output_ids)[start:end]
