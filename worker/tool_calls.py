"""Finds the tool calls in a model's answer text as it streams, in the model family's format.

Hermes (`<tool_call>{...}</tool_call>`) and Phi-4 (`<|tool_call|>{...}<|/tool_call|>`) wrap
each call in markers: text outside them is the answer, text inside is held until the block
closes and then read as a call. Llama 3 answers with a bare JSON object instead: an answer
that starts like one is held to its end. Like worker/reasoning.py, every character fed comes
out once, in order: answer text (CONTENT), a call with the text it was read from (CALL), or
whitespace between calls (MARKUP). A block that does not read as a call of a known function
goes to the answer as it was written.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any, Protocol

from presets.registry import ToolFormat
from worker.reasoning import CALL, CONTENT, MARKUP, ParsedCall, Segment, partial_marker
from worker.tool_formats import HERMES_CLOSE, HERMES_OPEN, LLAMA3_TAG, PHI4_CLOSE, PHI4_OPEN

_DECODER = json.JSONDecoder()
# The keys a call object may start with; another first key means the JSON is an answer.
_CALL_KEYS = frozenset({"name", "type", "function"})
# Past this much text without a first key, a leading `{` was not a call.
_UNDECIDED_MAX_CHARS = 200


class CallParser(Protocol):
    def feed(self, text: str) -> list[Segment]: ...

    def finish(self) -> list[Segment]: ...


def call_parser(tool_format: ToolFormat, *, names: Collection[str]) -> CallParser:
    known = frozenset(names)
    if tool_format == "llama3":
        return JsonCallParser(names=known)
    if tool_format == "phi4":
        return BlockCallParser(opening=PHI4_OPEN, closings=(PHI4_CLOSE, "</|tool_call|>"), names=known)
    return BlockCallParser(opening=HERMES_OPEN, closings=(HERMES_CLOSE,), names=known)


def _json_values(text: str) -> list[Any] | None:
    """The JSON values in `text`, one or several (separated by whitespace or `;`); None if it is not that."""
    values: list[Any] = []
    i, end = 0, len(text)
    while True:
        while i < end and (text[i].isspace() or (text[i] == ";" and values)):
            i += 1
        if i == end:
            return values or None
        try:
            value, i = _DECODER.raw_decode(text, i)
        except ValueError:
            return None
        values.append(value)


def read_calls(text: str, *, names: frozenset[str]) -> tuple[ParsedCall, ...] | None:
    """The calls `text` writes: objects (or lists of objects) with a known function's name and its arguments."""
    values = _json_values(text)
    if values is None:
        return None
    items = [item for value in values for item in (value if isinstance(value, list) else [value])]
    calls: list[ParsedCall] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("function"), dict):
            item = item["function"]
        name = item.get("name")
        if not isinstance(name, str) or name not in names:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))
        if isinstance(arguments, str):
            # Some models write the arguments as JSON text, as the API returns them.
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(ParsedCall(name, json.dumps(arguments, ensure_ascii=False)))
    return tuple(calls) or None


class BlockCallParser:
    """Calls between an opening and a closing marker (Hermes, Phi-4)."""

    def __init__(self, *, opening: str, closings: tuple[str, ...], names: frozenset[str]) -> None:
        self._opening = opening
        self._closings = closings
        self._names = names
        self._inside = False
        self._held = ""
        # Where the search for a closing marker resumes in the held block.
        self._scan = 0
        # After a call, whitespace is what separates calls, not part of the answer.
        self._called = False

    def feed(self, text: str) -> list[Segment]:
        out: list[Segment] = []
        self._held = self._step(self._held + text, out)
        return out

    def finish(self) -> list[Segment]:
        held, self._held = self._held, ""
        if not held:
            return []
        if self._inside:
            self._inside = False
            block = self._block(held, held[len(self._opening) :])
            # A call cut off by the token limit is no answer text: its markup is dropped.
            return [block if block.kind == CALL else Segment(MARKUP, held)]
        return [Segment(MARKUP if self._called and held.isspace() else CONTENT, held)]

    def _block(self, raw: str, body: str) -> Segment:
        calls = read_calls(body, names=self._names)
        if calls is None:
            return Segment(CONTENT, raw)
        self._called = True
        return Segment(CALL, raw, calls)

    def _step(self, text: str, out: list[Segment]) -> str:
        while text:
            if self._inside:
                found = [(i, c) for c in self._closings if (i := text.find(c, self._scan)) >= 0]
                if not found:
                    # A closing marker may have started in the text searched so far.
                    self._scan = max(len(self._opening), len(text) - max(map(len, self._closings)) + 1)
                    return text
                end, closing = min(found)
                out.append(self._block(text[: end + len(closing)], text[len(self._opening) : end]))
                text = text[end + len(closing) :]
                self._inside = False
                continue
            start = text.find(self._opening)
            if start >= 0:
                self._put(text[:start], out)
                text = text[start:]
                self._inside = True
                self._scan = len(self._opening)
                continue
            keep = partial_marker(text, self._opening)
            ready = text[: len(text) - keep]
            if self._called and ready.isspace():
                return text
            self._put(ready, out)
            return text[len(ready) :]
        return ""

    def _put(self, text: str, out: list[Segment]) -> None:
        if text:
            out.append(Segment(MARKUP if self._called and text.isspace() else CONTENT, text))


_START, _UNDECIDED, _CAPTURE, _PASS = range(4)


class JsonCallParser:
    """Llama 3's calls: the whole answer is a JSON object (or several), perhaps after `<|python_tag|>`."""

    def __init__(self, *, names: frozenset[str]) -> None:
        self._names = names
        self._state = _START
        self._held = ""

    def feed(self, text: str) -> list[Segment]:
        if self._state == _PASS:
            return [Segment(CONTENT, text)] if text else []
        held = self._held + text
        if self._state == _START:
            body = held.lstrip()
            if body.startswith(LLAMA3_TAG):
                body = body[len(LLAMA3_TAG) :].lstrip()
            elif LLAMA3_TAG.startswith(body):
                self._held = held
                return []
            if body and body[0] not in "{[":
                return self._release(held)
            if body:
                self._state = _UNDECIDED
        if self._state == _UNDECIDED:
            verdict = _first_key_verdict(held)
            if verdict is False:
                return self._release(held)
            if verdict:
                self._state = _CAPTURE
        self._held = held
        return []

    def finish(self) -> list[Segment]:
        held, self._held = self._held, ""
        if not held:
            return []
        if self._state in (_UNDECIDED, _CAPTURE):
            body = held.lstrip()
            if body.startswith(LLAMA3_TAG):
                body = body[len(LLAMA3_TAG) :]
            calls = read_calls(body, names=self._names)
            if calls is not None:
                return [Segment(CALL, held, calls)]
        return [Segment(CONTENT, held)]

    def _release(self, held: str) -> list[Segment]:
        self._state = _PASS
        self._held = ""
        return [Segment(CONTENT, held)] if held else []


def _first_key_verdict(held: str) -> bool | None:
    """Whether JSON text starts like a call (its first key a call's), or None while it cannot tell."""
    body = held.lstrip()
    if body.startswith(LLAMA3_TAG):
        body = body[len(LLAMA3_TAG) :]
    body = body.lstrip().lstrip("[").lstrip().lstrip("{").lstrip()
    end = body.find('"', 1)
    if body and body[0] != '"':
        return False
    if not body or end < 0:
        return False if len(held) > _UNDECIDED_MAX_CHARS else None
    return body[1:end] in _CALL_KEYS
