"""Grammars from response formats and JSON schemas: made, checked by llama.cpp's parser, embeddable."""

from __future__ import annotations

import re
from typing import Any

import pytest

from worker.grammar import (
    InvalidSchema,
    check_grammar,
    embed_grammar,
    json_object_grammar,
    json_schema_grammar,
    response_format_grammar,
    schema_rules,
)
from worker.protocol import ResponseFormat

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
}


def rule_names(grammar: str) -> list[str]:
    return re.findall(r"^([A-Za-z0-9-]+) ::=", grammar, flags=re.MULTILINE)


def test_the_json_object_grammar_parses_and_bounds_whitespace() -> None:
    grammar = json_object_grammar()
    check_grammar(grammar)
    assert rule_names(grammar)[0] == "root"
    # No rule repeats whitespace without a bound.
    assert "ws*" not in grammar and "ws+" not in grammar and "[ \\t\\n]*" not in grammar


def test_text_and_no_format_need_no_grammar() -> None:
    assert response_format_grammar(None) is None
    assert response_format_grammar(ResponseFormat(type="text")) is None


def test_json_object_and_a_schemaless_json_schema_ask_for_any_object() -> None:
    assert response_format_grammar(ResponseFormat(type="json_object")) == json_object_grammar()
    assert response_format_grammar(ResponseFormat(type="json_schema", name="x")) == json_object_grammar()


def test_a_schema_becomes_a_grammar_with_its_properties_and_enum() -> None:
    grammar = response_format_grammar(ResponseFormat(type="json_schema", schema=WEATHER, name="weather"))
    assert grammar is not None
    check_grammar(grammar)
    for literal in ('"\\"city\\""', '"\\"celsius\\""', '"\\"fahrenheit\\""', '"\\"days\\""'):
        assert literal in grammar
    assert "root" in rule_names(grammar)


def test_strings_from_a_schema_refuse_raw_control_characters() -> None:
    grammar = json_schema_grammar({"type": "string"})
    char = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "frobnicate"}, "Unrecognized schema"),
        ({"$ref": "https://example.com/schema.json"}, "not allowed"),
        ({"$ref": "other.json"}, "Unsupported ref"),
        ({"$ref": "#/$defs/missing"}, "missing"),
    ],
)
def test_a_schema_the_converter_cannot_handle_is_invalid(schema: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidSchema, match=re.escape(words)):
        json_schema_grammar(schema)


def test_a_schema_that_is_not_an_object_is_invalid() -> None:
    with pytest.raises(InvalidSchema, match="must be an object"):
        json_schema_grammar(["type", "object"])  # type: ignore[arg-type]


def test_a_grammar_llama_cpp_cannot_parse_is_refused() -> None:
    with pytest.raises(InvalidSchema, match="cannot parse"):
        check_grammar('root ::= "a" missing')
    with pytest.raises(InvalidSchema, match="cannot parse"):
        check_grammar('start ::= "a"')


def test_embedding_renames_rules_but_not_literals_classes_or_counts() -> None:
    grammar = 'root ::= "root" item{2,3} # root of it\nitem ::= [a-z] | "item"\n'
    assert embed_grammar(grammar, name="call") == (
        'call ::= "root" call-item{2,3} # root of it\ncall-item ::= [a-z] | "item"\n'
    )


def test_two_embedded_schemas_share_no_rule_name_and_parse_together() -> None:
    first = schema_rules(WEATHER, name="weather")
    second = schema_rules({"type": "object", "properties": {"city": {"type": "string"}}}, name="place")
    names = rule_names(first) + rule_names(second)
    assert len(names) == len(set(names))
    assert "weather" in names and "place" in names
    combined = f'root ::= "<tool_call>\\n" ( weather | place ) "\\n</tool_call>"\n{first}{second}'
    check_grammar(combined)


def test_an_embedded_name_must_be_a_plain_word() -> None:
    with pytest.raises(ValueError, match="letters and digits"):
        embed_grammar(json_object_grammar(), name="tool-1")
