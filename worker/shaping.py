"""Turns an engine's emitted text into a job's Token events: answer, reasoning, tool calls, log probabilities.

One plain choice (no tools, no thinking) goes straight through, as cheaply as ever: text
that arrives together becomes one Token. Otherwise each choice's text runs through its
reasoning splitter and then its tool-call parser (worker/reasoning.py, worker/tool_calls.py),
which say what every character is. A token's log probability goes with the answer text it
produced, so the entries of a choice concatenate to its content.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from worker.engine import Outcome
from worker.protocol import ChatJob, ChoiceEnd, Event, Finished, FinishReason, Token, TokenLogprob, ToolCallDelta
from worker.reasoning import CALL, CONTENT, REASONING, ReasoningSplitter, Segment
from worker.tool_calls import CallParser, call_parser
from worker.tool_formats import ChatFormat


class Emitted(NamedTuple):
    """Text of a choice other than the first, or text with log probabilities (plain text is a bare str)."""

    text: str
    choice: int
    logprobs: Sequence[TokenLogprob]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


class _Choice:
    """One choice's splitter and parser, and the log probabilities of text not yet classified."""

    def __init__(self, *, splitter: ReasoningSplitter | None, parser: CallParser | None) -> None:
        self.splitter = splitter
        self.parser = parser
        self.calls = 0
        self._received = 0
        self._classified = 0
        # (where the token's text starts in the choice's text, its entry)
        self._pending: deque[tuple[int, TokenLogprob]] = deque()

    def feed(self, text: str, logprobs: Sequence[TokenLogprob]) -> list[tuple[Segment, list[TokenLogprob]]]:
        start = self._received
        if logprobs:
            last = start + max(len(text) - 1, 0)
            at = start
            for entry in logprobs:
                self._pending.append((min(at, last), entry))
                at += len(entry.token)
        self._received += len(text)
        segments = self.splitter.feed(text) if self.splitter is not None else [Segment(CONTENT, text)]
        return self._account(self._parse(segments))

    def finish(self) -> list[tuple[Segment, list[TokenLogprob]]]:
        segments = self._parse(self.splitter.finish()) if self.splitter is not None else []
        if self.parser is not None:
            segments.extend(self.parser.finish())
        out = self._account(segments)
        self._pending.clear()
        return out

    def _parse(self, segments: list[Segment]) -> list[Segment]:
        parser = self.parser
        if parser is None:
            return segments
        out: list[Segment] = []
        for segment in segments:
            if segment.kind == CONTENT:
                out.extend(parser.feed(segment.text))
            else:
                out.append(segment)
        return out

    def _account(self, segments: list[Segment]) -> list[tuple[Segment, list[TokenLogprob]]]:
        """Pair each segment with the entries of the tokens that start in it: kept for the answer only."""
        pending = self._pending
        out: list[tuple[Segment, list[TokenLogprob]]] = []
        for segment in segments:
            end = self._classified + len(segment.text)
            taken: list[TokenLogprob] = []
            while pending and pending[0][0] < end:
                entry = pending.popleft()[1]
                if segment.kind == CONTENT:
                    taken.append(entry)
            self._classified = end
            out.append((segment, taken))
        return out


class JobOutput:
    """A job's Token events, its answer text (choice 0's content) and its end."""

    def __init__(self, *, job: ChatJob, chat_format: ChatFormat) -> None:
        self.seq = 0
        # Some text came out (for the time to first token).
        self.produced = False
        self._publish = job.publish_tokens
        self._chat_format = chat_format
        self._tool_names = [t.name for t in job.tools] if job.tool_choice != "none" else []
        self._first_call_only = not job.parallel_tool_calls
        self._answer: list[str] = []
        self._choices: dict[int, _Choice] | None = None
        self._thinking = False

    def start(self, *, in_reasoning: bool) -> None:
        """The prompt is ready: whether its template left a `<think>` open decides how text starts."""
        self._thinking = in_reasoning
        if in_reasoning or self._chat_format.reasoning or self._tool_names:
            self._choices = {}

    @property
    def answer(self) -> str:
        return "".join(self._answer)

    def add_text(self, events: list[Event], text: str) -> None:
        """Choice 0's next text, without log probabilities."""
        self.produced = True
        if self._choices is not None:
            self._shape(events, 0, text, ())
            return
        self._answer.append(text)
        if not self._publish:
            return
        # The hot path, spelled out: text that arrived together goes out as one Token.
        if events:
            last = events[-1]
            if type(last) is Token and last.index == 0 and last.text and not last.tool_calls and not last.logprobs:
                events[-1] = Token(last.text + text, last.seq)
                return
        self.seq += 1
        events.append(Token(text, self.seq))

    def add(self, events: list[Event], emitted: Emitted) -> None:
        self.produced = True
        if self._choices is not None:
            self._shape(events, emitted.choice, emitted.text, emitted.logprobs)
            return
        if emitted.choice == 0:
            self._answer.append(emitted.text)
        if self._publish:
            self._put_content(events, emitted.choice, emitted.text, emitted.logprobs)

    def finish(self, events: list[Event]) -> None:
        """The generation ended: what each choice held back comes out."""
        for index, choice in (self._choices or {}).items():
            self._put_segments(events, index, choice, choice.finish())

    def reason(self, index: int, reason: FinishReason) -> FinishReason:
        """A choice's finish reason: one that stopped after calling tools ended for them."""
        choices = self._choices
        if reason == "stop" and choices is not None and index in choices and choices[index].calls:
            return "tool_calls"
        return reason

    def finished(self, outcome: Outcome, *, model: str, prompt_tokens: int) -> Finished:
        return Finished(
            reason=self.reason(0, outcome.reason),
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            tokens_sent=self.seq,
            choices=[ChoiceEnd(c.index, self.reason(c.index, c.reason), c.completion_tokens) for c in outcome.choices]
            if len(outcome.choices) > 1
            else [],
        )

    def _shape(self, events: list[Event], index: int, text: str, logprobs: Sequence[TokenLogprob]) -> None:
        assert self._choices is not None
        choice = self._choices.get(index)
        if choice is None:
            fmt = self._chat_format
            choice = self._choices[index] = _Choice(
                splitter=ReasoningSplitter(opened=self._thinking) if self._thinking or fmt.reasoning else None,
                parser=call_parser(fmt.tool_format, names=self._tool_names) if self._tool_names else None,
            )
        self._put_segments(events, index, choice, choice.feed(text, logprobs))

    def _put_segments(
        self, events: list[Event], index: int, choice: _Choice, segments: list[tuple[Segment, list[TokenLogprob]]]
    ) -> None:
        for segment, logprobs in segments:
            kind = segment.kind
            if kind == CONTENT:
                if index == 0:
                    self._answer.append(segment.text)
                if self._publish:
                    self._put_content(events, index, segment.text, logprobs)
            elif kind == REASONING:
                if self._publish:
                    self._put_reasoning(events, index, segment.text)
            elif kind == CALL:
                for call in segment.calls:
                    if self._first_call_only and choice.calls:
                        break
                    if self._publish:
                        # As OpenAI streams a call: its name first, then its arguments.
                        first = ToolCallDelta(index=choice.calls, id=new_call_id(), name=call.name, arguments="")
                        rest = ToolCallDelta(index=choice.calls, arguments=call.arguments)
                        for delta in (first, rest):
                            self.seq += 1
                            events.append(Token("", self.seq, index=index, tool_calls=[delta]))
                    choice.calls += 1

    def _put_content(self, events: list[Event], index: int, text: str, logprobs: Sequence[TokenLogprob]) -> None:
        # Text that arrived together goes out as one chunk: same choice, both answer text.
        if events:
            last = events[-1]
            if type(last) is Token and last.index == index and last.text and not last.tool_calls:
                merged = [*last.logprobs, *logprobs] if logprobs else last.logprobs
                events[-1] = Token(last.text + text, last.seq, index=index, logprobs=merged)
                return
        self.seq += 1
        if logprobs:
            events.append(Token(text, self.seq, index=index, logprobs=list(logprobs)))
        else:
            events.append(Token(text, self.seq, index=index))

    def _put_reasoning(self, events: list[Event], index: int, text: str) -> None:
        if events:
            last = events[-1]
            if type(last) is Token and last.index == index and last.reasoning:
                events[-1] = Token("", last.seq, index=index, reasoning=last.reasoning + text)
                return
        self.seq += 1
        events.append(Token("", self.seq, index=index, reasoning=text))
