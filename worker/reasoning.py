"""Splits a reasoning model's text into its thinking (`<think>...</think>`) and its answer, as it streams.

Text arrives in small pieces, so a piece that could be the start of a marker is held back
until the next piece tells. Every character fed comes out exactly once, in order, as one
kind of Segment: the answer (CONTENT), the thinking (REASONING), or the markers and the
whitespace around them (MARKUP), which the client never sees. That accounting lets the
caller keep each token's log probability with the answer text it produced.
"""

from __future__ import annotations

from typing import NamedTuple

from worker.tool_formats import THINK_CLOSE, THINK_OPEN

CONTENT, REASONING, MARKUP, CALL = 0, 1, 2, 3


class ParsedCall(NamedTuple):
    name: str
    # JSON text of an object.
    arguments: str


class Segment(NamedTuple):
    kind: int
    text: str
    # For a CALL: the calls its text holds (a Phi-4 block may hold several).
    calls: tuple[ParsedCall, ...] = ()


def partial_marker(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker` (which starts with `<`)."""
    start = text.find(marker[0], max(0, len(text) - len(marker) + 1))
    while start >= 0:
        if marker.startswith(text[start:]):
            return len(text) - start
        start = text.find(marker[0], start + 1)
    return 0


_BEFORE, _THINKING_START, _THINKING, _BETWEEN, _ANSWER = range(5)


class ReasoningSplitter:
    """One choice's text: thinking first (opened by the prompt, or by the model), then the answer."""

    def __init__(self, *, opened: bool) -> None:
        self._state = _THINKING_START if opened else _BEFORE
        self._held = ""

    def feed(self, text: str) -> list[Segment]:
        if self._state == _ANSWER:
            return [Segment(CONTENT, text)] if text else []
        out: list[Segment] = []
        self._held = self._step(self._held + text, out)
        return out

    def finish(self) -> list[Segment]:
        held, self._held = self._held, ""
        if not held:
            return []
        if self._state == _BEFORE:
            return [Segment(CONTENT, held)]
        if self._state in (_THINKING, _THINKING_START):
            body = held.rstrip()
            tail = held[len(body) :]
            return [s for s in (Segment(REASONING, body), Segment(MARKUP, tail)) if s.text]
        return [Segment(MARKUP, held)]

    def _step(self, text: str, out: list[Segment]) -> str:
        """Classify what can be classified; return what must wait for more text."""
        while text:
            state = self._state
            if state == _BEFORE:
                body = text.lstrip()
                lead = len(text) - len(body)
                if body.startswith(THINK_OPEN):
                    out.append(Segment(MARKUP, text[: lead + len(THINK_OPEN)]))
                    text = text[lead + len(THINK_OPEN) :]
                    self._state = _THINKING_START
                elif not body or THINK_OPEN.startswith(body):
                    return text
                else:
                    # No thinking: the model answered at once.
                    self._state = _ANSWER
                    out.append(Segment(CONTENT, text))
                    return ""
            elif state in (_THINKING_START, _BETWEEN):
                body = text.lstrip()
                if len(body) < len(text):
                    out.append(Segment(MARKUP, text[: len(text) - len(body)]))
                text = body
                if text:
                    self._state = _THINKING if state == _THINKING_START else _ANSWER
            elif state == _THINKING:
                end = text.find(THINK_CLOSE)
                if end >= 0:
                    body = text[:end].rstrip()
                    if body:
                        out.append(Segment(REASONING, body))
                    out.append(Segment(MARKUP, text[len(body) : end + len(THINK_CLOSE)]))
                    text = text[end + len(THINK_CLOSE) :]
                    self._state = _BETWEEN
                    continue
                # Whitespace may be the end of the thinking (the part before `</think>`): wait for it.
                keep = partial_marker(text, THINK_CLOSE)
                body = text[: len(text) - keep].rstrip()
                if body:
                    out.append(Segment(REASONING, body))
                return text[len(body) :]
            else:
                out.append(Segment(CONTENT, text))
                return ""
        return ""
