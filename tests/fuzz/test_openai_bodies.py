"""Hypothesis feeds the OpenAI request parser arbitrary JSON bodies: a GenerateRequest or a 400 naming a field,
never another exception (an HTTP caller must never cause a 500)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import GenerateRequest, decode, encode
from swarm.web.openai_request import HONOURED, NEUTRAL, ApiError, build_request

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(st.characters(blacklist_categories=()), max_size=12),  # lone surrogates too: JSON can carry them
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(sorted(HONOURED | set(NEUTRAL) | {"model", "prompt", "messages"})) | st.text(max_size=8)


@FUZZ
@given(st.dictionaries(field_names, json_values, max_size=8), st.booleans(), st.booleans())
def test_any_body_is_a_request_or_a_400_naming_a_field(body: dict, chat: bool, with_base: bool) -> None:
    if with_base:  # most bodies then get past the required fields and exercise the optional ones
        body = {"model": "tiny", **({"messages": [{"role": "user", "content": "x"}]} if chat else {"prompt": "x"}),
                **body}  # fmt: skip
    try:
        request = build_request(body, chat=chat)
    except ApiError as err:
        assert err.status == 400
        assert err.param is None or isinstance(err.param, str)
        return
    assert isinstance(request, GenerateRequest)
    assert 1 <= request.n <= 16 and request.max_new_tokens >= 1
    assert request.logprobs is None or 0 <= request.logprobs <= 20
    request.priority = max(min(request.priority, 2**31), -(2**31))  # the gateway clamps before sending
    assert decode(encode(request)) == request  # it goes on the wire as it is
