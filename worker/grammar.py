"""GBNF grammars that constrain sampling to JSON: any object, a JSON schema, or rules to embed.

llama.cpp's grammar sampler lets only tokens that continue a sentence of the grammar through
and, once the grammar is complete, only end-of-generation. Whitespace between JSON tokens is
bounded in every grammar made here: an unbounded `ws*` lets a greedy model emit spaces
until its token budget runs out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import PRIMITIVE_RULES, json_schema_to_gbnf

from worker.protocol import ResponseFormat

# A newline and up to 20 indents, one space, or nothing: room for pretty printing, not a loop.
_JSON_OBJECT = r"""root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( member ( "," ws member )* )? "}"
member ::= string ws ":" ws value ws
array ::= "[" ws ( element ( "," ws element )* )? "]"
element ::= value ws
string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= "-"? ( "0" | [1-9] [0-9]{0,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
ws ::= | " " | "\n" [ \t]{0,20}
"""

# The schema converter's string character admits raw control characters (a newline inside a
# string), which JSON forbids: swapped for this one in every grammar made from a schema.
_STRICT_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
_LOOSE_CHAR = PRIMITIVE_RULES["char"].content

_RULE_NAME = re.compile(r"[A-Za-z0-9]+")
_WORD = re.compile(r"[A-Za-z0-9-]+")
# The parts of GBNF that hold no rule names: literals, character classes, repetition counts,
# token references and comments, each with its backslash escapes.
_OPAQUE = {'"': '"', "[": "]", "{": "}", "<": ">", "#": "\n"}


class InvalidSchema(ValueError):
    """A JSON schema (or the grammar made from it) that cannot constrain sampling."""


def json_object_grammar() -> str:
    """A grammar for any JSON object, with bounded whitespace."""
    return _JSON_OBJECT


def json_schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar for the JSON documents valid against `schema`; InvalidSchema when it cannot be made."""
    if not isinstance(schema, dict):
        raise InvalidSchema(f"a JSON schema must be an object, not {type(schema).__name__}")
    try:
        grammar = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise InvalidSchema("the JSON schema nests too deeply") from None
    except Exception as exc:
        raise InvalidSchema(f"the JSON schema cannot be turned into a grammar: {exc or type(exc).__name__}") from None
    grammar = "\n".join(_strict_line(line) for line in grammar.splitlines()) + "\n"
    check_grammar(grammar)
    return grammar


def response_format_grammar(fmt: ResponseFormat | None) -> str | None:
    """The grammar a response_format asks for; None for plain text."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object" or fmt.schema is None:
        return json_object_grammar()
    return json_schema_grammar(fmt.schema)


def embed_grammar(grammar: str, *, name: str) -> str:
    """The rules of `grammar` renamed so they can sit inside a bigger grammar.

    Its `root` becomes `name` and every other rule `x` becomes `name-x`. Names are letters
    and digits only, so the rules of two grammars embedded under different names never
    collide; the surrounding grammar must not use `name` or names starting with `name-`.
    """
    if not _RULE_NAME.fullmatch(name):
        raise ValueError(f"an embedded grammar's name must be letters and digits only, not {name!r}")

    def rename(word: str) -> str:
        return name if word == "root" else f"{name}-{word}"

    return _map_rule_names(grammar, rename)


def schema_rules(schema: dict[str, Any], *, name: str) -> str:
    """Rules whose rule `name` matches the JSON documents valid against `schema` (see embed_grammar)."""
    return embed_grammar(json_schema_grammar(schema), name=name)


def check_grammar(grammar: str, *, vocab: Any = None) -> None:
    """InvalidSchema unless llama.cpp parses `grammar` with a `root` rule.

    Without a vocabulary a grammar that names tokens (`<think>`) cannot be checked: pass the
    model's vocab for those.
    """
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidSchema("llama.cpp cannot parse the grammar made from the schema")
    llama_cpp.llama_sampler_free(sampler)


def _strict_line(line: str) -> str:
    rule, separator, body = line.partition(" ::= ")
    return f"{rule} ::= {_STRICT_CHAR}" if separator and body == _LOOSE_CHAR else line


def _map_rule_names(grammar: str, rename: Callable[[str], str]) -> str:
    out: list[str] = []
    i = 0
    while i < len(grammar):
        c = grammar[i]
        close = _OPAQUE.get(c)
        if close is not None:
            end = _opaque_end(grammar, i + 1, close)
            out.append(grammar[i:end])
            i = end
            continue
        word = _WORD.match(grammar, i)
        if word is not None:
            out.append(rename(word.group()))
            i = word.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _opaque_end(grammar: str, start: int, close: str) -> int:
    """Index just past the `close` that ends the part opened before `start` (backslashes escape)."""
    i = start
    while i < len(grammar):
        c = grammar[i]
        if c == "\\" and close != "\n":
            i += 2
            continue
        if c == close:
            return i + 1
        i += 1
    return len(grammar)
