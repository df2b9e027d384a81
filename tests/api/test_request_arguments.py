"""Which arguments a chat request may carry: each refusal is an OpenAI-style 400 naming its param,
and what is accepted reaches the job as the worker protocol says."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from api.errors import InvalidRequest, _validation_message
from api.protocol import ChatCompletionRequest
from api.service import ChatService
from presets.settings import Settings
from worker.protocol import ChatJob, Message, ResponseFormat, Tool, ToolCall, decode_job, encode_job

USER = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [USER], **fields}


def refusal(payload: dict[str, Any]) -> tuple[str, str | None]:
    """The 400's message and param, as the front's error handler writes them."""
    with pytest.raises(ValidationError) as refused:
        ChatCompletionRequest.model_validate(payload)
    return _validation_message(RequestValidationError(refused.value.errors()))


def service_with(catalog: Any = None) -> ChatService:
    return ChatService(settings=Settings(), redis=fakeredis.FakeAsyncRedis(), hub=None, catalog=catalog, admission=None)  # type: ignore[arg-type]


def job_of(payload: dict[str, Any]) -> ChatJob:
    request = ChatCompletionRequest.model_validate(payload)
    job = service_with()._job_for(request, request_id="r1", model="m", deadline_ms=int(time.time() * 1000))
    return decode_job(encode_job(job))


def schema_format(**json_schema: Any) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": json_schema}}


def function(**definition: Any) -> dict[str, Any]:
    return {"tools": [{"type": "function", "function": definition}]}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_object", "json_schema": {"name": "a", "schema": {}}}},
            "response_format.json_schema",
        ),
        (schema_format(name="a b", schema=SCHEMA), "response_format.json_schema.name"),
        (schema_format(name="a" * 65, schema=SCHEMA), "response_format.json_schema.name"),
        (schema_format(name="", schema=SCHEMA), "response_format.json_schema.name"),
        (schema_format(name="a"), "response_format.json_schema.schema"),
        (schema_format(name="a", schema=[1]), "response_format.json_schema.schema"),
        (schema_format(name="a", schema={"maximum": 2**70}), "response_format.json_schema.schema"),
        (schema_format(name="a", schema=SCHEMA, strict="maybe"), "response_format.json_schema.strict"),
        ({"tools": [{"type": "custom", "function": {"name": "f"}}]}, "tools.0.type"),
        (function(name="get weather"), "tools.0.function.name"),
        (function(name="f" * 65), "tools.0.function.name"),
        (function(name="f", parameters="{}"), "tools.0.function.parameters"),
        (function(name="f", parameters={"x": "\ud800"}), "tools.0.function.parameters"),
        ({"tools": [TIME] + [{"type": "function", "function": {"name": f"f{i}"}} for i in range(128)]}, "tools"),
        ({"tools": [TIME, TIME]}, "tools.1"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": "none"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice"),
        ({"tools": [WEATHER], "parallel_tool_calls": "maybe"}, "parallel_tool_calls"),
        ({"messages": [USER, {"role": "tool", "content": "21 C"}]}, "messages.1.tool_call_id"),
        ({"messages": [USER, {"role": "tool", "content": "21", "tool_call_id": "call_9"}]}, "messages.1.tool_call_id"),
        ({"messages": [{**USER, "tool_calls": [CALL]}]}, "messages.0.tool_calls"),
        ({"messages": [{**USER, "tool_call_id": "call_1"}]}, "messages.0.tool_call_id"),
        ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]}, "messages.0.tool_calls.0.function"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"orchestration_mode": "debate", "tools": [WEATHER]}, "tools"),
        ({"orchestration_mode": "critique", "response_format": {"type": "json_object"}}, "response_format"),
        ({"orchestration_mode": "ensemble", "logprobs": True}, "logprobs"),
        ({"orchestration_mode": "pipeline", "n": 2}, "n"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"service_tier": "gold"}, "service_tier"),
    ],
)
def test_each_refused_argument_is_named_as_the_param(fields: dict[str, Any], param: str) -> None:
    message, named = refusal(body(**fields))
    assert named == param, message
    assert message


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("logit_bias", {"1": 5}, "logit_bias"),
        ("functions", [{"name": "f"}], "use tools"),
        ("function_call", "auto", "use tool_choice"),
        ("audio", {"voice": "alloy", "format": "mp3"}, "Audio"),
        ("modalities", ["text", "audio"], "text modality"),
        ("prediction", {"type": "content", "content": "x"}, "Predicted outputs"),
        ("web_search_options", {}, "Web search"),
        ("reasoning_effort", "low", "reasoning_effort"),
        ("store", True, "store"),
        ("verbosity", "low", "verbosity"),
    ],
)
def test_openai_arguments_this_service_does_not_do_are_refused_by_name(field: str, value: Any, words: str) -> None:
    message, param = refusal(body(**{field: value}))
    assert param == field
    assert words in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("logit_bias", {}), ("logit_bias", None), ("modalities", ["text"]), ("store", False), ("functions", None)],
)
def test_the_off_value_of_an_unsupported_argument_passes(field: str, value: Any) -> None:
    job = job_of(body(**{field: value}))
    assert job.messages == [Message(role="user", content=USER["content"])]


def test_an_unknown_argument_is_refused_as_openai_refuses_it() -> None:
    assert refusal(body(temprature=0.5)) == ("Unrecognized request argument supplied: temprature", "temprature")
    message, param = refusal(body(**{"\ud800": 1}))
    message.encode("utf-8")
    assert param is not None and "Unrecognized request argument" in message
    nested, named = refusal(body(tools=[{"type": "function", "function": {"name": "f", "examples": []}}]))
    assert named == "tools.0.function.examples"
    assert nested == "Unrecognized request argument supplied: tools.0.function.examples"


def test_metadata_and_extensions_are_accepted() -> None:
    job = job_of(
        body(
            user="u1",
            metadata={"team": "a"},
            service_tier="auto",
            stream_options={"include_usage": True},
            safety_identifier="s1",
            prompt_cache_key="k1",
            task_type="code",
            orchestration_mode="single",
            priority=3,
            stream=True,
        )
    )
    assert (job.task_type, job.orchestration_mode, job.priority, job.stream) == ("code", "single", 3, True)


def test_structured_arguments_reach_the_job() -> None:
    job = job_of(
        body(
            tools=[WEATHER, {**TIME, "function": {**TIME["function"], "strict": True}}],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
            n=3,
            logprobs=True,
            top_logprobs=5,
        )
    )
    assert job.tools == [
        Tool(name="get_weather", description="The weather in a city.", parameters=WEATHER["function"]["parameters"]),
        Tool(name="get_time", strict=True),
    ]
    assert (job.tool_choice, job.parallel_tool_calls) == ("get_weather", False)
    assert job.response_format == ResponseFormat(type="json_schema", schema=SCHEMA, name="city", strict=True)
    assert (job.params.n, job.params.logprobs, job.params.top_logprobs) == (3, True, 5)
    assert job.params.grammar is None


def test_defaults_reach_the_job_as_the_protocol_defaults() -> None:
    job = job_of(body())
    assert (job.response_format, job.tools, job.tool_choice, job.parallel_tool_calls) == (None, [], "auto", True)
    assert (job.params.n, job.params.logprobs, job.params.top_logprobs) == (1, False, 0)
    assert job_of(body(response_format={"type": "text"})).response_format is None
    assert job_of(body(response_format={"type": "json_object"})).response_format == ResponseFormat(type="json_object")
    assert job_of(body(tools=[WEATHER], tool_choice="required")).tool_choice == "required"
    assert job_of(body(tools=[WEATHER], tool_choice="none")).tool_choice == "none"


def test_a_tool_conversation_reaches_the_worker_with_its_calls_and_answers() -> None:
    job = job_of(
        body(
            messages=[
                {"role": "developer", "content": "Be brief."},
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL], "refusal": None},
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "21 C"}]},
                {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "sunny"},
            ],
            tools=[WEATHER],
        )
    )
    assert job.messages == [
        Message(role="system", content="Be brief."),
        Message(role="user", content=USER["content"]),
        Message(role="assistant", content="", tool_calls=[ToolCall("call_1", "get_weather", '{"city":"Paris"}')]),
        # A tool's answer names its function, from the call it answers unless the client named it.
        Message(role="tool", content="21 C", name="get_weather", tool_call_id="call_1"),
        Message(role="tool", content="sunny", name="weather", tool_call_id="call_1"),
    ]  # fmt: skip


async def test_a_preset_that_orchestrates_refuses_what_an_orchestrated_answer_cannot_do() -> None:
    # The request names no mode: the preset's (debate) applies, and is checked before anything is routed.
    catalog = SimpleNamespace(active=SimpleNamespace(mode="debate"))
    request = ChatCompletionRequest.model_validate(body(logprobs=True))
    with pytest.raises(InvalidRequest) as refused:
        await service_with(catalog).submit(request)
    assert refused.value.param == "logprobs"
    assert "orchestration_mode 'debate'" in refused.value.message
