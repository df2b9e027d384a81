"""Property tests of the request parser: whatever a client sends is a request or a ValidationError,
and every request it accepts becomes a job that encodes for the worker."""

from __future__ import annotations

import functools
import time
from typing import Any

import fakeredis
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.errors import _validation_message
from api.protocol import (
    INT64_MAX,
    INT64_MIN,
    MAX_COMPLETION_TOKENS,
    MAX_MESSAGES,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_TASK_TYPE_CHARS,
    MAX_USER_CHARS,
    ChatCompletionRequest,
)
from api.service import ChatService
from presets.settings import Settings
from worker.protocol import decode_job, encode_job

FIELDS = (
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "stop", "seed", "n", "presence_penalty", "frequency_penalty", "user", "task_type",
    "orchestration_mode", "priority", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "metadata", "service_tier", "safety_identifier", "prompt_cache_key",
    # Refused unless off, and names no request has.
    "logit_bias", "store", "modalities", "functions", "temprature", "\ud800",
)  # fmt: skip

# Text as JSON can carry it: any code point, lone surrogates included (from \ud800 escapes).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
huge_ints = st.one_of(
    st.integers(), st.integers(min_value=2**62, max_value=2**80).flatmap(lambda n: st.sampled_from([n, -n]))
)
scalars = st.one_of(st.none(), st.booleans(), huge_ints, st.floats(allow_nan=True, allow_infinity=True), any_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(any_text, inner, max_size=5)),
    max_leaves=20,
)
text_parts = st.fixed_dictionaries({"type": st.just("text"), "text": any_text})
function_names = st.one_of(
    st.sampled_from(["get_weather", "f", "a-b_1"]), st.from_regex(r"[a-z_]{1,8}", fullmatch=True), any_text
)
json_objects = st.dictionaries(any_text, json_values, max_size=4)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {"id": st.one_of(st.sampled_from(["call_1", "call_2"]), any_text)},
        optional={
            "type": st.one_of(st.just("function"), json_values),
            "function": st.fixed_dictionaries({"name": function_names, "arguments": any_text}),
        },
    ),
    max_size=2,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "robot", 3])},
        optional={
            "content": st.one_of(any_text, st.lists(text_parts, max_size=3), json_values),
            "name": any_text,
            "tool_calls": st.one_of(tool_calls, json_values),
            "tool_call_id": st.one_of(st.sampled_from(["call_1", "call_2"]), any_text),
        },
    ),
    max_size=4,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.one_of(st.just("function"), json_values),
            "function": st.fixed_dictionaries(
                {"name": function_names},
                optional={
                    "description": any_text,
                    "parameters": st.one_of(json_objects, json_values),
                    "strict": st.booleans(),
                },
            ),
        }
    ),
    max_size=3,
)
response_formats = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])}),
    st.fixed_dictionaries(
        {
            "type": st.just("json_schema"),
            "json_schema": st.fixed_dictionaries(
                {"name": function_names}, optional={"schema": st.one_of(json_objects, json_values), "strict": scalars}
            ),
        }
    ),
)
tool_choices = st.one_of(
    st.sampled_from(["none", "auto", "required", "any"]),
    st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries({"name": function_names})}),
)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(st.just("smollm2-135m"), any_text),
    "messages": st.one_of(messages, json_values),
    "stop": st.one_of(any_text, st.lists(any_text, max_size=6), json_values),
    "tools": tools,
    "response_format": response_formats,
    "tool_choice": tool_choices,
    "n": st.integers(0, 5),
    "top_logprobs": st.integers(-1, 21),
    "logit_bias": st.one_of(st.just({}), st.dictionaries(any_text, st.integers(-100, 100), max_size=2)),
}
requests = st.fixed_dictionaries(
    {},
    optional={name: st.one_of(field_values.get(name, st.nothing()), json_values) for name in FIELDS},
)


@functools.cache
def chat_service() -> ChatService:
    # Only the job builder is used: nothing here reaches Redis.
    fake = fakeredis.FakeAsyncRedis()
    return ChatService(settings=Settings(), redis=fake, hub=None, catalog=None, admission=None)  # type: ignore[arg-type]


def job_of(request: ChatCompletionRequest) -> bytes:
    job = chat_service()._job_for(request, request_id="r1", model="m", deadline_ms=int(time.time() * 1000))
    return encode_job(job)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(requests, json_values))
def test_any_payload_parses_or_is_a_validation_error_with_a_message(payload: Any) -> None:
    parses_or_is_refused(payload)


def parses_or_is_refused(payload: Any) -> None:
    try:
        request = ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        message, param = _validation_message(RequestValidationError(exc.errors()))
        assert message
        # The 400's body is JSON: everything in it must encode as UTF-8.
        message.encode("utf-8")
        (param or "").encode("utf-8")
        return
    job = decode_job(job_of(request))
    assert len(job.messages) == len(request.messages) <= MAX_MESSAGES
    assert len(job.params.stop) <= MAX_STOP_STRINGS
    assert all(len(s) <= MAX_STOP_CHARS for s in job.params.stop)
    assert job.params.seed is None or INT64_MIN <= job.params.seed <= INT64_MAX
    assert job.params.max_tokens is None or 1 <= job.params.max_tokens <= MAX_COMPLETION_TOKENS
    for message in job.messages:
        message.content.encode("utf-8")
    assert 1 <= job.params.n <= 4
    assert 0 <= job.params.top_logprobs <= 20
    assert job.params.top_logprobs == 0 or job.params.logprobs
    names = [tool.name for tool in job.tools]
    assert len(set(names)) == len(names) <= 128
    assert job.tool_choice in ("none", "auto", "required") or job.tool_choice in names
    assert names or request.tool_choice is None
    if request.orchestration_mode not in (None, "single"):
        assert not job.tools and job.response_format is None and not job.params.logprobs and job.params.n == 1


BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
valid_text = st.text(st.characters(codec="utf-8"), max_size=30)
STRUCTURED = ("tools", "tool_choice", "response_format", "logprobs", "top_logprobs", "n")
call_ids = st.sampled_from(["call_1", "call_2"])
tool_conversations = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": st.just("user"), "content": valid_text}),
        st.fixed_dictionaries(
            {
                "role": st.just("assistant"),
                "content": st.one_of(st.none(), valid_text),
                "tool_calls": st.lists(
                    st.fixed_dictionaries(
                        {
                            "id": call_ids,
                            "type": st.just("function"),
                            "function": st.fixed_dictionaries({"name": function_names, "arguments": valid_text}),
                        }
                    ),
                    max_size=2,
                ),
            }
        ),
        st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": call_ids, "content": valid_text}),
    ),
    min_size=1,
    max_size=4,
)
structured_requests = st.fixed_dictionaries(
    {},
    optional={name: field_values.get(name, st.booleans()) for name in STRUCTURED}
    | {"orchestration_mode": st.sampled_from(["single", "debate"]), "messages": tool_conversations},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=structured_requests)
def test_structured_arguments_parse_or_are_refused_and_every_accepted_one_encodes(fields: dict[str, Any]) -> None:
    parses_or_is_refused({**BASE, **fields})


INTEGER_FIELDS = ("seed", "max_tokens", "max_completion_tokens", "n", "priority", "top_logprobs")


def text_in(field: str, value: str) -> dict[str, Any]:
    if field in ("content", "name"):
        return {**BASE, "messages": [{"role": "user", "content": "hi", field: value}]}
    return {**BASE, field: value}


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(INTEGER_FIELDS), value=huge_ints)
def test_an_integer_field_refuses_what_the_job_cannot_carry(field: str, value: int) -> None:
    try:
        request = ChatCompletionRequest.model_validate({**BASE, field: value})
    except ValidationError as exc:
        assert _validation_message(RequestValidationError(exc.errors()))[1] == field
        return
    decode_job(job_of(request))


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(["model", "user", "task_type", "stop", "content", "name"]), value=any_text)
def test_a_text_field_refuses_what_utf8_cannot_carry(field: str, value: str) -> None:
    try:
        request = ChatCompletionRequest.model_validate(text_in(field, value))
    except ValidationError as exc:
        param = _validation_message(RequestValidationError(exc.errors()))[1] or ""
        assert param.split(".")[-1] == field
        return
    decode_job(job_of(request))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(INT64_MIN, INT64_MAX),
    max_tokens=st.integers(1, MAX_COMPLETION_TOKENS),
    stop=st.lists(st.text(st.characters(codec="utf-8"), max_size=MAX_STOP_CHARS), max_size=MAX_STOP_STRINGS),
    user=st.text(st.characters(codec="utf-8"), max_size=MAX_USER_CHARS),
    task_type=st.text(st.characters(codec="utf-8"), max_size=MAX_TASK_TYPE_CHARS),
    contents=st.lists(valid_text, min_size=1, max_size=5),
)
def test_every_value_within_the_limits_is_accepted_and_round_trips(
    seed: int, max_tokens: int, stop: list[str], user: str, task_type: str, contents: list[str]
) -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": c} for c in contents],
            "seed": seed,
            "max_tokens": max_tokens,
            "stop": stop,
            "user": user,
            "task_type": task_type,
        }
    )
    job = decode_job(job_of(request))
    assert (job.params.seed, job.params.max_tokens, job.params.stop) == (seed, max_tokens, stop)
    assert [m.content for m in job.messages] == contents


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("seed", 2**70, "seed"),
        ("seed", -(2**70), "seed"),
        ("max_tokens", MAX_COMPLETION_TOKENS + 1, "max_tokens"),
        ("max_completion_tokens", 2**64, "max_completion_tokens"),
        ("priority", 2**64, "priority"),
        ("stop", ["x"] * (MAX_STOP_STRINGS + 1), "stop"),
        ("stop", "x" * (MAX_STOP_CHARS + 1), "stop"),
        ("user", "u" * (MAX_USER_CHARS + 1), "user"),
        ("task_type", "t" * (MAX_TASK_TYPE_CHARS + 1), "task_type"),
        ("messages", [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1), "messages"),
        ("messages", [{"role": "user", "content": "bad \ud800 text"}], "messages.0.content"),
    ],
)
def test_values_past_a_limit_are_refused_naming_the_field(field: str, value: Any, param: str) -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(ValidationError) as refused:
        ChatCompletionRequest.model_validate(payload)
    assert _validation_message(RequestValidationError(refused.value.errors()))[1] == param
