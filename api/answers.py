"""A whole answer from a job's Token events: each choice's text, reasoning, tool calls and log probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

from api.protocol import (
    ChatMessageOut,
    Choice,
    ChoiceLogprobs,
    FunctionCallOut,
    OrchestrationInfo,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprobOut,
)
from worker.protocol import Finished, Summary, Token, TokenLogprob


def finish_reasons(finish: Finished, *, n: int) -> list[tuple[int, str]]:
    """(choice index, finish_reason) for every choice, in order of index.

    A job cut short ends "cancelled" inside the service; a client that still reads sees "stop".
    """
    reasons = {end.index: str(end.reason) for end in finish.choices} or {0: str(finish.reason)}
    for index in range(n):
        reasons.setdefault(index, str(finish.reason))
    return [(index, "stop" if reason == "cancelled" else reason) for index, reason in sorted(reasons.items())]


def logprob_out(entry: TokenLogprob) -> TokenLogprobOut:
    return TokenLogprobOut(
        token=entry.token,
        logprob=entry.logprob,
        bytes=entry.bytes,
        top_logprobs=[TopLogprobOut(token=top.token, logprob=top.logprob, bytes=top.bytes) for top in entry.top],
    )


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Draft:
    """One choice as its pieces arrive."""

    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, token: Token) -> None:
        self.text.append(token.text)
        if token.reasoning:
            self.reasoning.append(token.reasoning)
        for delta in token.tool_calls:
            call = self.calls.setdefault(delta.index, _Call())
            # The first piece names the call; later pieces carry only arguments.
            if delta.id is not None:
                call.id = delta.id
            if delta.name is not None:
                call.name = delta.name
            call.arguments.append(delta.arguments)
        self.logprobs.extend(token.logprobs)

    def message(self) -> ChatMessageOut:
        calls = [
            ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments="".join(call.arguments)))
            for _, call in sorted(self.calls.items())
        ]
        text = "".join(self.text)
        return ChatMessageOut(
            content=None if not text and calls else text,
            reasoning_content="".join(self.reasoning) or None,
            tool_calls=calls or None,
        )


class AnswerBuilder:
    """Collects a job's Token events into its choices, for the one response of a non-streamed request."""

    def __init__(self, *, n: int = 1, logprobs: bool = False) -> None:
        self._n = n
        self._logprobs = logprobs
        self._drafts: dict[int, _Draft] = {}

    def add(self, token: Token) -> None:
        draft = self._drafts.get(token.index)
        if draft is None:
            draft = self._drafts[token.index] = _Draft()
        draft.add(token)

    def restart(self) -> None:
        """The job runs again from the beginning: what came so far is void."""
        self._drafts.clear()

    def choices(self, finish: Finished) -> list[Choice]:
        """Every choice, in order of index, each with how it ended."""
        reasons = dict(finish_reasons(finish, n=self._n))
        for index in self._drafts:
            reasons.setdefault(index, "stop" if finish.reason == "cancelled" else str(finish.reason))
        return [
            Choice(
                index=index,
                message=(self._drafts.get(index) or _Draft()).message(),
                logprobs=self._choice_logprobs(index),
                finish_reason=reason,
            )
            for index, reason in sorted(reasons.items())
        ]

    def _choice_logprobs(self, index: int) -> ChoiceLogprobs | None:
        if not self._logprobs:
            return None
        draft = self._drafts.get(index)
        return ChoiceLogprobs(content=[logprob_out(entry) for entry in draft.logprobs] if draft else [])


def orchestration_info(summary: Summary | None) -> OrchestrationInfo | None:
    if summary is None:
        return None
    return OrchestrationInfo(
        mode=summary.mode,
        models_used=summary.models_used,
        rounds=summary.rounds,
        confidence=summary.confidence,
        low_confidence=summary.low_confidence,
    )
