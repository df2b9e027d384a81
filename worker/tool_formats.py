"""How a model family writes tool calls and thinks: the worker's view of models.yaml's chat fields.

Each format has three faces: the system text that lists the tools for a template that has no
place for them, the text of an earlier call or result in a conversation rendered that way, and
the GBNF grammar that makes the model write one (or several) well-formed calls. Parsing the
calls back out of generated text is worker/tool_calls.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presets.registry import ToolFormat, load_model_specs
from worker.grammar import embed_grammar, json_object_grammar, schema_rules
from worker.protocol import Tool

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"
PHI4_OPEN = "<|tool_call|>"
PHI4_CLOSE = "<|/tool_call|>"
LLAMA3_TAG = "<|python_tag|>"
NEWLINE = "\n"
# Calls one grammar-constrained turn may make: a small model that repeats its call stops here
# rather than at its token limit.
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True, kw_only=True)
class ChatFormat:
    tool_format: ToolFormat = "hermes"
    # The model thinks in a <think>...</think> block before its answer.
    reasoning: bool = False


def detect_chat_format(template: str | None) -> ChatFormat:
    """What a chat template reveals: the markers it renders earlier calls with, a </think> it strips."""
    template = template or ""
    tool_format: ToolFormat = "hermes"
    if PHI4_OPEN in template:
        tool_format = "phi4"
    elif HERMES_OPEN not in template and LLAMA3_TAG in template:
        tool_format = "llama3"
    return ChatFormat(tool_format=tool_format, reasoning=THINK_CLOSE in template)


def chat_format_for(
    *, model_id: str | None = None, file_name: str | None = None, template: str | None = None
) -> ChatFormat:
    """The registry's fields for the model (found by id or by its file's name), the template's where it says none."""
    detected = detect_chat_format(template)
    spec = next(
        (
            s
            for s in load_model_specs().values()
            if s.model_id == model_id or (file_name is not None and s.file_name == file_name)
        ),
        None,
    )
    if spec is None:
        return detected
    return ChatFormat(
        tool_format=spec.tool_format or detected.tool_format,
        reasoning=detected.reasoning if spec.reasoning is None else spec.reasoning,
    )


def tool_schema(tool: Tool) -> dict[str, Any]:
    """A tool as OpenAI's request carries it, the shape chat templates iterate over."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def tools_system_text(tool_format: ToolFormat, tools: Sequence[Tool]) -> str:
    """Lists the tools and the way to call them, for a template that does not."""
    if tool_format == "phi4":
        listed = "".join(f"<|tool|>{_json(tool_schema(t)['function'])}<|/tool|>" for t in tools)
        return (
            f"You can call these functions to help you answer: {listed}\n"
            "To call one, answer with its name and arguments in this form, and nothing else: "
            '<|tool_call|>{"name": "the function name", "arguments": {"argument name": "value"}}<|/tool_call|>'
        )
    listed = "\n".join(_json(tool_schema(t)) for t in tools)
    if tool_format == "llama3":
        return (
            "You can call these functions to help you answer; each is described by a JSON schema:\n"
            f"{listed}\n\n"
            "To call one, answer with only a JSON object in this form: "
            '{"name": "the function name", "parameters": {"argument name": "value"}}'
        )
    return (
        "# Tools\n\n"
        "You can call functions to help you answer. Their JSON schemas are listed between <tools> and </tools>:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "To call a function, write its name and arguments as a JSON object between <tool_call> and </tool_call>:\n"
        '<tool_call>\n{"name": "the function name", "arguments": {"argument name": "value"}}\n</tool_call>'
    )


def call_text(tool_format: ToolFormat, *, name: str, arguments: Any) -> str:
    """An earlier call written as the model would have written it (`arguments` parsed, or the raw text)."""
    if tool_format == "llama3":
        return _json({"name": name, "parameters": arguments})
    body = _json({"name": name, "arguments": arguments})
    if tool_format == "phi4":
        return f"{PHI4_OPEN}{body}{PHI4_CLOSE}"
    return f"{HERMES_OPEN}\n{body}\n{HERMES_CLOSE}"


def result_text(tool_format: ToolFormat, content: str) -> str:
    """A tool's answer, as the text of a user turn."""
    if tool_format == "phi4":
        return f"<|tool_response|>{content}<|/tool_response|>"
    if tool_format == "llama3":
        return f"Function result: {content}"
    return f"<tool_response>\n{content}\n</tool_response>"


def _literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def calls_grammar(tool_format: ToolFormat, tools: Sequence[Tool], *, parallel: bool) -> str:
    """A grammar whose `root` is one call (or with `parallel` up to MAX_PARALLEL_CALLS) of any of `tools`.

    The arguments follow each function's parameters schema. Llama 3.2's template takes one call
    per turn, so that format always makes one.
    """
    rules: list[str] = []
    alternatives: list[str] = []
    for i, tool in enumerate(tools):
        rule = f"fn{i}"
        if not tool.parameters:
            rules.append(embed_grammar(json_object_grammar(), name=rule))
        else:
            rules.append(schema_rules(tool.parameters, name=rule))
        key = "parameters" if tool_format == "llama3" else "arguments"
        head = '{"name": ' + _json(tool.name) + ", " + _json(key) + ": "
        alternatives.append(f"{_literal(head)} {rule} {_literal('}')}")
    call = "toolcall ::= " + " | ".join(alternatives)
    if tool_format == "llama3":
        root = "root ::= toolcall"
    elif tool_format == "phi4":
        block = f"{_literal(PHI4_OPEN)} toolcall {_literal(PHI4_CLOSE)}"
        root = f"root ::= {block}" + (f" ( {block} ){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else "")
    else:
        block = f"{_literal(HERMES_OPEN + NEWLINE)} toolcall {_literal(NEWLINE + HERMES_CLOSE)}"
        root = f"root ::= {block}" + (
            f" ( {_literal(NEWLINE)} {block} ){{0,{MAX_PARALLEL_CALLS - 1}}}" if parallel else ""
        )
    return "\n".join([root, call, *rules]) + "\n"


def call_triggers(tool_format: ToolFormat) -> list[str]:
    """Where a call begins in free text: the patterns that make calls_grammar bind (a lazy grammar).

    llama.cpp matches a pattern against all the text so far and holds the text to the grammar
    from the pattern's first group on. Llama 3.2 writes a call as its whole answer, a JSON object
    (after <|python_tag|> or not); the others open a call with their marker anywhere.
    """
    if tool_format == "llama3":
        return [r"\s*(?:<\|python_tag\|>)?\s*(\{)[\s\S]*"]
    opening = PHI4_OPEN if tool_format == "phi4" else HERMES_OPEN
    return [r"[\s\S]*?(" + re.escape(opening) + r")[\s\S]*"]


def union_grammar(first: str, second: str) -> str:
    """A grammar for what either grammar accepts."""
    return "\n".join(
        ["root ::= eithera | eitherb", embed_grammar(first, name="eithera"), embed_grammar(second, name="eitherb")]
    )


def reasoning_grammar(answer: str, *, opened: bool) -> str:
    """`answer`'s grammar after a reasoning block: already open in the prompt, or one the model may open.

    The thinking may hold any text but `</` (the start of its end): enough freedom for
    reasoning, and the block's end stays unambiguous.
    """
    think = f"thinktext {_literal(THINK_CLOSE)} thinkws"
    if not opened:
        think = f"( {_literal(THINK_OPEN)} {think} )?"
    return "\n".join(
        [
            f"root ::= {think} thinkanswer",
            'thinktext ::= ( [^<] | "<" [^/] )*',
            "thinkws ::= [ \\t\\n]{0,4}",
            embed_grammar(answer, name="thinkanswer"),
        ]
    )
