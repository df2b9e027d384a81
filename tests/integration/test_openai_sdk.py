"""OpenAI's API breadth through the `openai` SDK, against a real front and a worker running SmolLM2-135M:
structured output, tools, log probabilities, several choices, and the refusal of what is not done."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.conftest import StartFront, StartWorker

MODEL = "smollm2-135m"
pytestmark = [pytest.mark.redis, pytest.mark.model]

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
        "population": {"type": "integer"},
    },
    "required": ["city", "country", "population"],
    "additionalProperties": False,
}
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["C", "F"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather like in Paris right now?"}]


@pytest.fixture
def client(start_worker: StartWorker, start_front: StartFront) -> openai.OpenAI:
    start_worker(MODEL)
    return openai.OpenAI(base_url=start_front() + "/v1", api_key="unused", max_retries=0)


def streamed(client: openai.OpenAI, **request: Any) -> list[ChatCompletionChunk]:
    return list(client.chat.completions.create(model=MODEL, stream=True, temperature=0, **request))


def streamed_text(chunks: list[ChatCompletionChunk], index: int = 0) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)


def finish_reason(chunks: list[ChatCompletionChunk], index: int = 0) -> str | None:
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].index == index]
    assert reasons.count(None) == len(reasons) - 1, reasons
    return reasons[-1]


def answer(client: openai.OpenAI, **request: Any) -> ChatCompletion:
    return client.chat.completions.create(model=MODEL, temperature=0, **request)


def test_json_object_answers_parse_as_objects(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Describe a cat as a JSON object with its name and age."}],
        "response_format": {"type": "json_object"},
        "max_tokens": 120,
    }
    plain = answer(client, **request)
    assert plain.choices[0].finish_reason == "stop", plain.choices[0].message.content
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)

    chunks = streamed(client, **request)
    assert finish_reason(chunks) == "stop"
    assert streamed_text(chunks) == plain.choices[0].message.content


def test_json_schema_answers_validate_against_the_schema(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Name the capital of France, its country and its population."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
        },
        "max_tokens": 120,
    }
    plain = answer(client, **request)
    assert plain.choices[0].finish_reason == "stop", plain.choices[0].message.content
    jsonschema.validate(json.loads(plain.choices[0].message.content or ""), CITY_SCHEMA)

    chunks = streamed(client, **request)
    assert finish_reason(chunks) == "stop"
    jsonschema.validate(json.loads(streamed_text(chunks)), CITY_SCHEMA)


def reassembled_calls(chunks: list[ChatCompletionChunk]) -> list[dict[str, str]]:
    """Streamed delta.tool_calls put together as OpenAI's clients do: by index, the first piece names the call."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if delta.index not in calls:
                assert delta.id and delta.type == "function" and delta.function and delta.function.name
                calls[delta.index] = {"id": delta.id, "name": delta.function.name, "arguments": ""}
            else:
                assert delta.id is None and (delta.function is None or delta.function.name is None)
            calls[delta.index]["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return [calls[index] for index in sorted(calls)]


def test_a_required_tool_call_has_valid_arguments_plain_and_streamed(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "messages": ASK_WEATHER,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "max_tokens": 120,
    }
    # Both compared requests find their prompt in the worker's cache and decode only its last token;
    # a cold read decodes that token beside the rest of the prompt, and on some CPUs the batched
    # kernel's other rounding can part a greedy text at a near tie.
    answer(client, **request)
    plain = answer(client, **request)
    choice = plain.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert calls, choice.message
    for call in calls:
        assert call.type == "function" and call.function.name == "get_weather"
        assert call.id.startswith("call_") and len(call.id) == len("call_") + 24
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)

    chunks = streamed(client, **request)
    assert finish_reason(chunks) == "tool_calls"
    again = reassembled_calls(chunks)
    assert [(c["name"], c["arguments"]) for c in again] == [(c.function.name, c.function.arguments) for c in calls]


def test_strict_tools_under_auto_are_accepted_and_any_call_follows_the_schema(client: openai.OpenAI) -> None:
    # SmolLM2 answers this one in text; that a call it starts is held from its marker on is
    # tests/worker/test_batched_sampling.py's lazy-grammar test on the same model.
    strict: Any = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "strict": True}}
    request: dict[str, Any] = {"messages": ASK_WEATHER, "tools": [strict], "max_tokens": 60}
    # As in the test above: both compared requests find their prompt in the worker's cache.
    answer(client, **request)
    plain = answer(client, **request)
    choice = plain.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert "<tool_call>" not in (choice.message.content or "")
    for call in choice.message.tool_calls or []:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)
    assert streamed_text(streamed(client, **request)) == (choice.message.content or "")


def test_a_named_tool_choice_calls_that_function(client: openai.OpenAI) -> None:
    other: Any = {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }
    plain = answer(
        client,
        messages=ASK_WEATHER,
        tools=[other, WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
    )
    calls = plain.choices[0].message.tool_calls or []
    assert [call.function.name for call in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_PARAMETERS)


def test_a_conversation_with_the_tool_result_is_answered(client: openai.OpenAI) -> None:
    called = answer(client, messages=ASK_WEATHER, tools=[WEATHER_TOOL], tool_choice="required", max_tokens=120)
    message = called.choices[0].message
    assert message.tool_calls
    conversation: Any = [
        *ASK_WEATHER,
        # The SDK's own message object, as applications send it back.
        message,
        *(
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "unit": "C"})}
            for call in message.tool_calls
        ),
    ]
    for stream in (False, True):
        if stream:
            chunks = streamed(client, messages=conversation, tools=[WEATHER_TOOL], max_tokens=24)
            assert finish_reason(chunks) in ("stop", "length", "tool_calls")
        else:
            follow_up = answer(client, messages=conversation, tools=[WEATHER_TOOL], max_tokens=24)
            assert follow_up.choices[0].finish_reason in ("stop", "length", "tool_calls")
            assert follow_up.usage is not None and follow_up.usage.prompt_tokens > 0


def test_logprobs_tokens_make_up_the_content_with_the_alternatives_asked(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
        "logprobs": True,
        "top_logprobs": 3,
    }
    plain = answer(client, **request)
    choice = plain.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(entry.token for entry in entries) == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        # At temperature 0 the sampled token is the likeliest one.
        assert entry.top_logprobs[0].token == entry.token
    assert b"".join(bytes(entry.bytes or []) for entry in entries).decode() == choice.message.content

    chunks = streamed(client, **request)
    pieces = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    assert "".join(entry.token for entry in pieces) == streamed_text(chunks) == choice.message.content
    assert [len(entry.top_logprobs) for entry in pieces] == [3] * len(pieces)

    none = answer(client, messages=request["messages"], max_tokens=4)
    assert none.choices[0].logprobs is None


def test_two_choices_at_temperature_zero_are_equal(client: openai.OpenAI) -> None:
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": 16,
        "n": 2,
    }
    plain = answer(client, **request)
    assert [choice.index for choice in plain.choices] == [0, 1]
    assert plain.choices[0].message.content == plain.choices[1].message.content
    assert plain.choices[0].message.content
    assert plain.usage is not None
    single = answer(client, messages=request["messages"], max_tokens=16)
    assert single.usage is not None and plain.usage.completion_tokens == 2 * single.usage.completion_tokens

    chunks = streamed(client, **request)
    assert streamed_text(chunks, 0) == streamed_text(chunks, 1) == plain.choices[0].message.content
    assert finish_reason(chunks, 0) == finish_reason(chunks, 1) == plain.choices[0].finish_reason


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"logit_bias": {"1": 5}}, "logit_bias", "logit_bias"),
    ({"extra_body": {"temprature": 0.5}}, "temprature", "Unrecognized request argument supplied: temprature"),
    ({"extra_body": {"functions": [{"name": "f"}]}}, "functions", "use tools"),
    ({"tool_choice": "auto"}, "tool_choice", "tools"),
    ({"top_logprobs": 2}, "top_logprobs", "logprobs"),
    ({"n": 5}, "n", "4"),
    ({"tools": [WEATHER_TOOL], "extra_body": {"orchestration_mode": "debate"}}, "tools", "orchestration_mode"),
]


def test_what_is_not_done_is_a_bad_request_naming_it(start_front: StartFront) -> None:
    # Refused before any model is asked: the front alone answers.
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused", max_retries=0)
    for request_fields, param, words in REFUSED:
        with pytest.raises(openai.BadRequestError) as refused:
            answer(client, messages=ASK_WEATHER, max_tokens=4, **request_fields)
        error = refused.value.body
        assert isinstance(error, dict), request_fields
        assert (error["param"], error["type"]) == (param, "invalid_request_error"), error
        assert words in error["message"], error
