"""Tool calls read back out of streamed text in each family's format, and the grammars that make them."""

from __future__ import annotations

import itertools
import json

import pytest

from presets.registry import ToolFormat
from worker.grammar import check_grammar, json_object_grammar
from worker.protocol import Tool
from worker.reasoning import CALL, CONTENT, MARKUP, ParsedCall, Segment
from worker.tool_calls import call_parser, read_calls
from worker.tool_formats import (
    ChatFormat,
    call_text,
    calls_grammar,
    chat_format_for,
    detect_chat_format,
    reasoning_grammar,
    union_grammar,
)

NAMES = frozenset({"get_weather", "add"})
WEATHER = ParsedCall("get_weather", '{"city": "Paris"}')


def run(tool_format: ToolFormat, text: str, cuts: tuple[int, ...] = ()) -> list[Segment]:
    parser = call_parser(tool_format, names=NAMES)
    bounds = [0, *cuts, len(text)]
    out: list[Segment] = []
    for a, b in itertools.pairwise(bounds):
        out.extend(parser.feed(text[a:b]))
    out.extend(parser.finish())
    return out


def summary(segments: list[Segment]) -> tuple[str, list[ParsedCall], str]:
    content = "".join(s.text for s in segments if s.kind == CONTENT)
    markup = "".join(s.text for s in segments if s.kind == MARKUP)
    return content, [c for s in segments if s.kind == CALL for c in s.calls], markup


def assert_same_at_every_cut(tool_format: ToolFormat, text: str, expected: tuple[str, list[ParsedCall], str]) -> None:
    cuts = [()] + [(a,) for a in range(1, len(text))]
    cuts += [(a, b) for a in range(1, len(text), 3) for b in range(a + 1, len(text), 2)]
    for cut in cuts:
        segments = run(tool_format, text, cut)
        assert summary(segments) == expected, cut
        # Every character comes out once, in order: what log probabilities are matched against.
        assert "".join(s.text for s in segments) == text, cut


def test_hermes_calls_and_the_text_before_them_at_every_cut() -> None:
    text = (
        'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>\n'
    )
    assert_same_at_every_cut("hermes", text, ("Let me check.", [WEATHER, ParsedCall("add", '{"a": 1}')], "\n\n"))


def test_phi4_calls_in_a_list_or_one_by_one_at_every_cut() -> None:
    text = (
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
        '<|tool_call|>{"name": "add", "arguments": {}}</|tool_call|>'
    )
    assert_same_at_every_cut("phi4", text, ("", [WEATHER, ParsedCall("add", "{}")], ""))


def test_llama3_json_call_after_the_python_tag_at_every_cut() -> None:
    text = ' <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert_same_at_every_cut("llama3", text, ("", [WEATHER], ""))


def test_llama3_calls_separated_by_semicolons() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "add", "parameters": {"a": 2}}'
    assert summary(run("llama3", text))[1] == [WEATHER, ParsedCall("add", '{"a": 2}')]


def test_llama3_text_answers_stream_and_json_answers_are_let_go_early() -> None:
    parser = call_parser("llama3", names=NAMES)
    assert parser.feed("Hello") == [Segment(CONTENT, "Hello")]
    parser = call_parser("llama3", names=NAMES)
    assert parser.feed('{"na') == []
    assert parser.feed("me") == []
    assert parser.feed('": "get_weather"') == []
    parser = call_parser("llama3", names=NAMES)
    assert parser.feed('{"answer"') == [Segment(CONTENT, '{"answer"')]
    assert parser.feed(": 4}") == [Segment(CONTENT, ": 4}")]


@pytest.mark.parametrize(
    ("tool_format", "text"),
    [
        ("hermes", '<tool_call>{"name": "unknown", "arguments": {}}</tool_call>'),
        ("hermes", "<tool_call>not json</tool_call>"),
        ("phi4", '<|tool_call|>{"name": "add", "arguments": [1]}<|/tool_call|>'),
        ("llama3", '{"name": "add", "parameters": {"a": 1}} and more'),
    ],
)
def test_what_does_not_read_as_a_known_call_stays_the_answer(tool_format: ToolFormat, text: str) -> None:
    assert summary(run(tool_format, text)) == (text, [], "")


def test_a_block_the_token_limit_cut_is_read_if_its_call_is_whole_else_dropped() -> None:
    whole = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert summary(run("hermes", whole))[1] == [WEATHER]
    cut = '<tool_call>\n{"name": "get_weather", "arguments": {"ci'
    assert summary(run("hermes", cut)) == ("", [], cut)
    # A second call cut short after a whole first one: its markup never reaches the answer.
    first = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    second = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call'
    content, calls, _ = summary(run("hermes", first + second))
    assert content == "" and calls == [WEATHER]


def test_text_without_markers_goes_straight_through() -> None:
    parser = call_parser("hermes", names=NAMES)
    assert parser.feed("plain ") == [Segment(CONTENT, "plain ")]
    assert parser.feed("text <b>") == [Segment(CONTENT, "text <b>")]
    assert parser.feed("<tool") == []
    assert parser.finish() == [Segment(CONTENT, "<tool")]


def test_read_calls_takes_openai_shaped_entries_and_rejects_other_values() -> None:
    wrapped = '{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}'
    assert read_calls(wrapped, names=NAMES) == (ParsedCall("add", '{"a": 1}'),)
    assert read_calls('{"name": "add"}', names=NAMES) == (ParsedCall("add", "{}"),)
    assert read_calls("[]", names=NAMES) is None
    assert read_calls('"add"', names=NAMES) is None
    assert read_calls('{"name": "add", "arguments": "not json"}', names=NAMES) is None


@pytest.mark.parametrize("tool_format", ["hermes", "llama3", "phi4"])
def test_an_earlier_call_written_as_text_reads_back_as_that_call(tool_format: ToolFormat) -> None:
    text = call_text(tool_format, name="get_weather", arguments={"city": "Paris"})
    assert summary(run(tool_format, text))[1] == [WEATHER]


def test_the_template_tells_the_format_where_the_registry_does_not() -> None:
    assert detect_chat_format("{{ '<tool_call>' }}{{ '</think>' }}") == ChatFormat(tool_format="hermes", reasoning=True)
    assert detect_chat_format("<|python_tag|>") == ChatFormat(tool_format="llama3")
    assert detect_chat_format("<|tool_call|>") == ChatFormat(tool_format="phi4")
    assert detect_chat_format(None) == ChatFormat()
    assert chat_format_for(model_id="not-a-registry-model", template="</think>") == ChatFormat(reasoning=True)


def test_the_registry_gives_each_family_its_format() -> None:
    assert chat_format_for(model_id="deepseek-r1-7b") == ChatFormat(tool_format="hermes", reasoning=True)
    assert chat_format_for(model_id="llama-3.2-3b") == ChatFormat(tool_format="llama3")
    assert chat_format_for(model_id="phi-4").tool_format == "phi4"
    # The registry beats the template: found by the model file's name, as the engines know it.
    assert chat_format_for(file_name="SmolLM2-135M-Instruct.Q4_1.gguf", template="<|tool_call|>") == ChatFormat()


WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}


@pytest.mark.parametrize("tool_format", ["hermes", "llama3", "phi4"])
@pytest.mark.parametrize("parallel", [True, False])
def test_call_grammars_parse_alone_after_thinking_and_beside_an_answer(tool_format: ToolFormat, parallel: bool) -> None:
    tools = [Tool(name="get_weather", parameters=WEATHER_PARAMETERS), Tool(name='odd "name"')]
    grammar = calls_grammar(tool_format, tools, parallel=parallel)
    check_grammar(grammar)
    check_grammar(reasoning_grammar(grammar, opened=True))
    check_grammar(reasoning_grammar(grammar, opened=False))
    check_grammar(union_grammar(json_object_grammar(), grammar))
    assert json.dumps('odd "name"')[1:-1].replace("\\", "\\\\").replace('"', '\\"') in grammar
