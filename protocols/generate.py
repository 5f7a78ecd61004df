"""Messages of `/swarm/generate/1.0.0`: remote generation with streaming, typed refusals and cancellation.

The asker sends one GenerateRequest; the server answers GenerateAccepted or GenerateRejected, then TokenChunks as
tokens are produced, then GenerateDone. The asker may send Cancel at any time, or close the stream; either frees
the request on the server. Plain data: validation of values the engine owns (sampling bounds) happens there.

Version 1.1 adds n samples per request, log-probabilities, penalties and ignore_eos. Every new field has a
default, so 1.0 messages decode unchanged; a 1.0 server ignores the new fields, and its GenerateAccepted (no
`n`, no `logprobs`) tells the asker so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.codec import Message, Record
from protocols.errors import ErrorCode, ProtocolError, error_code_of

MAX_CHAT_MESSAGES = 256
MAX_SAMPLES = 256  # most samples (n) a request may name on the wire; a server's own bound is lower
MAX_TOP_LOGPROBS = 20
FINISH_REASONS = ("stop", "length", "cancelled", "error")


@dataclass
class ChatMessage(Record):
    """One turn of a chat: role is system, user, assistant (or another role the model's template knows)."""

    role: str
    content: str


@dataclass
class GenerateRequest(Message):
    """Generate a completion of ``prompt`` (text), ``prompt_token_ids``, or ``messages`` (chat; the server applies
    its model's chat template). ``continuation_token_ids`` are completion tokens already produced elsewhere: the
    server continues after them (failover resume) and counts them against ``max_new_tokens``. ``n`` samples share
    the prompt; ``logprobs``: None, or how many top alternatives to report beside each token's log-probability.
    Penalties: 0, 0 and 1 are neutral (ranges are the engine's to check)."""

    TYPE = "generate_request"
    VERSION = (1, 1)

    request_id: str
    model_id: str = ""  # "" = whatever the peer serves
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[ChatMessage] | None = None
    continuation_token_ids: list[int] = field(default_factory=list)
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    priority: int = 0
    n: int = 1
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False

    def validate(self) -> None:
        given = sum(x is not None for x in (self.prompt, self.prompt_token_ids, self.messages))
        if given != 1:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "give exactly one of prompt, prompt_token_ids and messages", field="prompt"
            )
        if self.messages is not None and not 0 < len(self.messages) <= MAX_CHAT_MESSAGES:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"must hold 1..{MAX_CHAT_MESSAGES} messages", field="messages")
        if not self.request_id or len(self.request_id) > 128:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "must have 1..128 characters", field="request_id")
        if self.max_new_tokens < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "must be >= 1", field="max_new_tokens")
        if len(self.continuation_token_ids) >= self.max_new_tokens:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "must be shorter than max_new_tokens", field="continuation_token_ids"
            )
        if not 1 <= self.n <= MAX_SAMPLES:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"must be in 1..{MAX_SAMPLES}", field="n")
        if self.n > 1 and self.continuation_token_ids:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "a request with n > 1 cannot resume", field="n")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"must be nil or in 0..{MAX_TOP_LOGPROBS}", field="logprobs")


@dataclass
class GenerateAccepted(Message):
    """The server admitted the request; tokens follow. ``n`` and ``logprobs`` echo what the server will honour
    (a 1.0 server sends neither: the defaults say it produces one sample without log-probabilities)."""

    TYPE = "generate_accepted"
    VERSION = (1, 1)

    request_id: str
    model_id: str
    model_hash: str
    prompt_tokens: int
    predicted_ttft_ms: float = 0.0
    n: int = 1
    logprobs: int | None = None


@dataclass
class GenerateRejected(Message):
    """The server refused the request. With OVERLOADED, ``retry_after_ms`` says when a retry may succeed."""

    TYPE = "generate_rejected"
    VERSION = (1, 0)

    request_id: str
    code: int
    message: str = ""
    field: str | None = None
    retry_after_ms: int | None = None

    @property
    def error_code(self) -> ErrorCode:
        return error_code_of(self.code)


@dataclass
class TokenLogprobs(Record):
    """Log-probability of one sampled token under the model's raw distribution, and the most likely tokens
    (``top_ids``, best first) with theirs (``top_logprobs``). -inf is sent as -9999.0, as vLLM does."""

    token_id: int
    logprob: float
    top_ids: list[int] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)

    def validate(self) -> None:
        if len(self.top_ids) != len(self.top_logprobs) or len(self.top_ids) > MAX_TOP_LOGPROBS:
            raise ProtocolError(ErrorCode.MALFORMED, "top_ids and top_logprobs must pair up", field="top_ids")


@dataclass
class TokenChunk(Message):
    """New completion tokens of sample ``choice``. ``index`` is the position of the first of them in that
    sample's completion (continuation tokens included), so a receiver can detect gaps and duplicates. ``text``
    is their decoded text; ``logprobs`` (when asked for) has one entry per token."""

    TYPE = "token_chunk"
    VERSION = (1, 1)

    request_id: str
    index: int
    token_ids: list[int]
    text: str = ""
    choice: int = 0
    logprobs: list[TokenLogprobs] | None = None

    def validate(self) -> None:
        if not 0 <= self.choice < MAX_SAMPLES:
            raise ProtocolError(ErrorCode.MALFORMED, f"must be in 0..{MAX_SAMPLES - 1}", field="choice")
        if self.logprobs is not None and len(self.logprobs) != len(self.token_ids):
            raise ProtocolError(ErrorCode.MALFORMED, "must have one entry per token", field="logprobs")


@dataclass
class Usage(Record):
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Timings(Record):
    """Milliseconds as the server measured them."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None
    queue_ms: float | None = None


@dataclass
class GenerateDone(Message):
    """Last message of a request: why it finished, token counts (all samples), timings; with n > 1, why each
    sample finished (``finish_reasons``, one per sample)."""

    TYPE = "generate_done"
    VERSION = (1, 1)

    request_id: str
    finish_reason: str
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    error: str | None = None
    finish_reasons: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for name, reasons in (("finish_reason", [self.finish_reason]), ("finish_reasons", self.finish_reasons)):
            if any(r not in FINISH_REASONS for r in reasons):
                raise ProtocolError(ErrorCode.MALFORMED, f"must be one of {', '.join(FINISH_REASONS)}", field=name)
        if len(self.finish_reasons) > MAX_SAMPLES:
            raise ProtocolError(ErrorCode.MALFORMED, f"at most {MAX_SAMPLES} entries", field="finish_reasons")


@dataclass
class Cancel(Message):
    """Stop generating ``request_id`` and free its resources now."""

    TYPE = "cancel"
    VERSION = (1, 0)

    request_id: str
