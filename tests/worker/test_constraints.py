"""The grammar a job asks for, the tools its prompt lists, and the 400s for what cannot be done."""

from __future__ import annotations

import re

import pytest

from presets.registry import ToolFormat
from worker.constraints import constrained_params, refusal_event, rendered_tools, with_reasoning
from worker.engine import PromptTooLong, UnsupportedParameter
from worker.grammar import InvalidSchema, check_grammar
from worker.protocol import ChatJob, Message, ResponseFormat, SamplingParams, Tool
from worker.tool_formats import ChatFormat

WEATHER = Tool(name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})
JSON = ResponseFormat(type="json_object")
HERMES = ChatFormat()


def job(**fields: object) -> ChatJob:
    defaults: dict[str, object] = {
        "request_id": "r",
        "model": "m",
        "messages": [Message("user", "hi")],
        "params": SamplingParams(temperature=0.3),
        "channel": "c",
        "priority": 2,
        "deadline_ms": 0,
    }
    return ChatJob(**{**defaults, **fields})  # type: ignore[arg-type]


def grammar_of(chat_job: ChatJob, chat_format: ChatFormat = HERMES) -> str | None:
    params = constrained_params(chat_job, chat_format)
    assert params.temperature == 0.3
    if params.grammar is not None:
        check_grammar(params.grammar)
    return params.grammar


def test_plain_jobs_leave_the_model_free() -> None:
    assert grammar_of(job()) is None
    assert grammar_of(job(response_format=ResponseFormat(type="text"))) is None


@pytest.mark.parametrize(
    ("tool_format", "text", "start"),
    [
        ("hermes", 'Let me look.\n<tool_call>\n{"name"', "<tool_call>"),
        ("phi4", 'Sure. <|tool_call|>{"name"', "<|tool_call|>"),
        ("llama3", '<|python_tag|>{"name"', "{"),
        ("llama3", ' {"name"', "{"),
    ],
)
def test_auto_tools_leave_the_text_free_until_a_call_begins(tool_format: ToolFormat, text: str, start: str) -> None:
    params = constrained_params(job(tools=[WEATHER]), ChatFormat(tool_format=tool_format))
    assert params.grammar is not None and params.grammar_triggers and params.eager_grammar is None
    check_grammar(params.grammar)
    # llama.cpp matches a trigger against all the text so far and binds from its first group.
    matches = [re.fullmatch(pattern, text) for pattern in params.grammar_triggers]
    found = next(m for m in matches if m is not None)
    assert text[found.start(1) :].startswith(start)
    assert not any(re.fullmatch(pattern, "The weather is fine.") for pattern in params.grammar_triggers)
    assert not params.lazy_grammar_required


def test_a_strict_tool_under_auto_needs_the_lazy_grammar_held() -> None:
    strict = Tool(name="get_weather", parameters=WEATHER.parameters, strict=True)
    params = constrained_params(job(tools=[strict]), HERMES)
    assert params.grammar_triggers and params.lazy_grammar_required
    # A forced call needs no trigger: its grammar binds from the first token.
    forced = constrained_params(job(tools=[strict], tool_choice="required"), HERMES)
    assert forced.grammar_triggers == [] and forced.eager_grammar == forced.grammar is not None


def test_auto_tools_beside_a_response_format_allow_either() -> None:
    grammar = grammar_of(job(tools=[WEATHER], response_format=JSON))
    assert grammar is not None and grammar.startswith("root ::= eithera | eitherb")
    assert "<tool_call>" in grammar


def test_no_tools_means_the_response_format_alone_and_no_tools_in_the_prompt() -> None:
    chat_job = job(tools=[WEATHER], tool_choice="none", response_format=JSON)
    grammar = grammar_of(chat_job)
    assert grammar is not None and "tool_call" not in grammar
    assert rendered_tools(chat_job) == ()
    assert rendered_tools(job(tools=[WEATHER])) == [WEATHER]


def test_required_calls_repeat_only_with_parallel_calls() -> None:
    parallel = grammar_of(job(tools=[WEATHER], tool_choice="required"))
    single = grammar_of(job(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    assert parallel is not None and "{0,7}" in parallel.splitlines()[0]
    assert single is not None and "{0," not in single.splitlines()[0]


def test_a_named_function_is_the_only_one_the_grammar_names() -> None:
    other = Tool(name="add")
    grammar = grammar_of(job(tools=[other, WEATHER], tool_choice="get_weather"), ChatFormat(tool_format="llama3"))
    assert grammar is not None
    assert '\\"get_weather\\", \\"parameters\\"' in grammar and '\\"add\\"' not in grammar


def test_schemas_no_grammar_follows_are_refused_naming_their_param() -> None:
    bad = {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}
    with pytest.raises(InvalidSchema):
        constrained_params(job(response_format=ResponseFormat(type="json_schema", schema=bad)), ChatFormat())
    with pytest.raises(UnsupportedParameter) as refused:
        constrained_params(job(tools=[Tool(name="f", parameters=bad)], tool_choice="required"), ChatFormat())
    assert refused.value.param == "tools"


def test_thinking_goes_before_the_grammar_only_for_a_model_that_thinks() -> None:
    params = constrained_params(job(response_format=JSON), ChatFormat())
    assert with_reasoning(params, chat_format=ChatFormat(), in_reasoning=False) is params
    opened = with_reasoning(params, chat_format=ChatFormat(), in_reasoning=True).grammar
    optional = with_reasoning(params, chat_format=ChatFormat(reasoning=True), in_reasoning=False).grammar
    assert opened is not None and opened.startswith('root ::= thinktext "</think>"')
    assert optional is not None and optional.startswith('root ::= ( "<think>" thinktext')
    check_grammar(opened)
    check_grammar(optional)
    plain = job().params
    assert with_reasoning(plain, chat_format=ChatFormat(reasoning=True), in_reasoning=True) is plain


def test_refusals_are_400s_naming_the_param() -> None:
    too_long = refusal_event(PromptTooLong(prompt_tokens=9, max_tokens=None, context_length=4))
    assert (too_long.status, too_long.code, too_long.param) == (400, "context_length_exceeded", "messages")
    schema = refusal_event(InvalidSchema("bad"))
    assert (schema.status, schema.param) == (400, "response_format")
    unsupported = refusal_event(UnsupportedParameter("no", param="n"))
    assert (unsupported.status, unsupported.param, unsupported.message) == (400, "n", "no")
