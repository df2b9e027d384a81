"""The null engine: an echo that honours n and logprobs and refuses a grammar."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from worker.engine import ChoiceOutcome, Outcome, UnsupportedParameter
from worker.null_engine import NullEngine
from worker.protocol import Message, SamplingParams, TokenLogprob, TopLogprob


@dataclass
class Emitted:
    calls: list[tuple[int, str, list[TokenLogprob]]] = field(default_factory=list)

    def __call__(self, text: str, /, *, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> None:
        self.calls.append((index, text, list(logprobs)))

    def text(self, index: int) -> str:
        return "".join(text for i, text, _ in self.calls if i == index)

    def logprobs(self, index: int) -> list[TokenLogprob]:
        return [entry for i, _, entries in self.calls if i == index for entry in entries]


def generate(params: SamplingParams, *, cancel: threading.Event | None = None) -> tuple[Emitted, Outcome]:
    engine = NullEngine(model_id="null")
    emitted = Emitted()
    prompt = engine.prepare([Message("user", "hello there")], params)
    return emitted, engine.generate(prompt, params, cancel=cancel or threading.Event(), emit=emitted)


def test_one_choice_echoes_the_last_user_message() -> None:
    emitted, outcome = generate(SamplingParams(max_tokens=3))
    assert emitted.calls == [(0, "hello", []), (0, " there", []), (0, "hello", [])]
    assert outcome == Outcome(reason="length", completion_tokens=3)


def test_each_of_n_choices_is_the_same_echo_with_its_index() -> None:
    emitted, outcome = generate(SamplingParams(max_tokens=2, n=3))
    assert [emitted.text(i) for i in range(3)] == ["hello there"] * 3
    # The choices advance together, as a batched engine's do.
    assert [i for i, _, _ in emitted.calls] == [0, 1, 2, 0, 1, 2]
    assert outcome == Outcome(
        reason="length",
        completion_tokens=6,
        choices=tuple(ChoiceOutcome(index=i, reason="length", completion_tokens=2) for i in range(3)),
    )


def test_logprobs_are_certain_and_the_only_alternative_is_the_word_itself() -> None:
    emitted, _ = generate(SamplingParams(max_tokens=2, n=2, logprobs=True, top_logprobs=5))
    for index in (0, 1):
        entries = emitted.logprobs(index)
        assert "".join(entry.token for entry in entries) == emitted.text(index)
        assert entries[1] == TokenLogprob(" there", 0.0, list(b" there"), [TopLogprob(" there", 0.0, list(b" there"))])


def test_logprobs_without_alternatives() -> None:
    emitted, _ = generate(SamplingParams(max_tokens=1, logprobs=True))
    assert emitted.logprobs(0) == [TokenLogprob("hello", 0.0, list(b"hello"), [])]


def test_a_grammar_is_refused_before_generation_naming_response_format() -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        NullEngine(model_id="null").prepare([Message("user", "hi")], SamplingParams(grammar='root ::= "{}"'))
    assert caught.value.param == "response_format"


def test_cancel_ends_every_choice() -> None:
    cancel = threading.Event()
    cancel.set()
    emitted, outcome = generate(SamplingParams(max_tokens=4, n=2), cancel=cancel)
    assert emitted.calls == []
    assert outcome.reason == "cancelled" and [c.reason for c in outcome.choices] == ["cancelled", "cancelled"]


def test_a_lazy_grammar_passes_unless_a_strict_tool_needs_it_held() -> None:
    engine = NullEngine(model_id="null")
    lazy = SamplingParams(max_tokens=2, grammar='root ::= "x"', grammar_triggers=[r"[\s\S]*?(<tool_call>)[\s\S]*"])
    assert engine.prepare([Message("user", "hi there")], lazy).tokens
    strict = SamplingParams(
        max_tokens=2,
        grammar='root ::= "x"',
        grammar_triggers=[r"[\s\S]*?(<tool_call>)[\s\S]*"],
        lazy_grammar_required=True,
    )
    with pytest.raises(UnsupportedParameter) as caught:
        engine.prepare([Message("user", "hi there")], strict)
    assert caught.value.param == "tools" and "strict" in str(caught.value)
