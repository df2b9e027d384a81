"""A job's emitted text turned into Token events: merging, seq, thinking, tool calls, log probabilities."""

from __future__ import annotations

import re

from worker.engine import ChoiceOutcome, Outcome
from worker.protocol import ChatJob, Event, Message, SamplingParams, Token, TokenLogprob, Tool, ToolCallDelta
from worker.shaping import Emitted, JobOutput
from worker.tool_formats import ChatFormat

TOOLS = [Tool(name="get_weather"), Tool(name="add")]


def job(**fields: object) -> ChatJob:
    defaults: dict[str, object] = {
        "request_id": "r",
        "model": "m",
        "messages": [Message("user", "hi")],
        "params": SamplingParams(),
        "channel": "c",
        "priority": 2,
        "deadline_ms": 0,
    }
    return ChatJob(**{**defaults, **fields})  # type: ignore[arg-type]


def entry(token: str) -> TokenLogprob:
    return TokenLogprob(token, -0.5, list(token.encode()))


def tokens(events: list[Event]) -> list[Token]:
    assert all(isinstance(e, Token) for e in events)
    return [e for e in events if isinstance(e, Token)]


def test_plain_text_of_one_batch_is_one_token_and_batches_count_up() -> None:
    output = JobOutput(job=job(), chat_format=ChatFormat())
    output.start(in_reasoning=False)
    first: list[Event] = []
    output.add_text(first, "Hel")
    output.add_text(first, "lo")
    second: list[Event] = []
    output.add_text(second, "!")
    output.finish(second)
    assert first == [Token("Hello", 1)]
    assert second == [Token("!", 2)]
    assert output.answer == "Hello!"
    assert output.finished(Outcome(reason="stop", completion_tokens=3), model="m", prompt_tokens=4).tokens_sent == 2


def test_thinking_goes_to_reasoning_and_only_the_answer_keeps_log_probabilities() -> None:
    output = JobOutput(job=job(), chat_format=ChatFormat(reasoning=True))
    output.start(in_reasoning=True)
    events: list[Event] = []
    pieces = ["Hmm", " ok", "\n</think>", "\n\n", "Fine", "."]
    for piece in pieces:
        output.add(events, Emitted(piece, 0, [entry(piece)]))
        events.append(Token("-", 0, index=3))  # a boundary, as another batch would make
    output.finish(events)
    sent = [t for t in tokens(events) if t.index == 0]
    assert "".join(t.reasoning for t in sent) == "Hmm ok"
    assert "".join(t.text for t in sent) == "Fine."
    assert [e.token for t in sent for e in t.logprobs] == ["Fine", "."]
    assert all(not (t.text and t.reasoning) for t in sent)
    assert output.answer == "Fine."


def test_log_probabilities_concatenate_to_the_content_when_a_token_holds_thinking_and_answer() -> None:
    output = JobOutput(job=job(), chat_format=ChatFormat(reasoning=True))
    output.start(in_reasoning=False)
    events: list[Event] = []
    for piece in ["<think>", "x", "</think>", "The", " answer", " <b>"]:
        output.add(events, Emitted(piece, 0, [entry(piece)]))
    output.finish(events)
    sent = tokens(events)
    content = "".join(t.text for t in sent)
    assert content == "The answer <b>"
    assert "".join(e.token for t in sent for e in t.logprobs) == content


def test_a_call_is_streamed_as_openai_does_and_the_choice_ends_for_tool_calls() -> None:
    output = JobOutput(job=job(tools=TOOLS), chat_format=ChatFormat())
    output.start(in_reasoning=False)
    events: list[Event] = []
    text = 'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    for i in range(0, len(text), 4):
        output.add_text(events, text[i : i + 4])
    output.finish(events)
    sent = tokens(events)
    assert [t.seq for t in sent] == [1, 2, 3]
    assert sent[0] == Token("Sure.", 1)
    first, rest = sent[1].tool_calls[0], sent[2].tool_calls[0]
    assert first.id is not None and re.fullmatch(r"call_[0-9a-f]{24}", first.id)
    assert first == ToolCallDelta(index=0, id=first.id, name="get_weather", arguments="")
    assert rest == ToolCallDelta(index=0, arguments='{"city": "Paris"}')
    assert output.reason(0, "stop") == "tool_calls"
    assert output.reason(0, "length") == "length"
    assert output.answer == "Sure."


def test_without_parallel_calls_only_the_first_call_is_kept() -> None:
    output = JobOutput(job=job(tools=TOOLS, parallel_tool_calls=False), chat_format=ChatFormat(tool_format="phi4"))
    output.start(in_reasoning=False)
    events: list[Event] = []
    output.add_text(
        events,
        '<|tool_call|>[{"name": "add", "arguments": {"a": 1}}, {"name": "add", "arguments": {"a": 2}}]<|/tool_call|>',
    )
    output.finish(events)
    deltas = [d for t in tokens(events) for d in t.tool_calls]
    assert [d.index for d in deltas] == [0, 0]
    assert deltas[1].arguments == '{"a": 1}'


def test_tool_choice_none_leaves_call_text_as_the_answer() -> None:
    output = JobOutput(job=job(tools=TOOLS, tool_choice="none"), chat_format=ChatFormat())
    output.start(in_reasoning=False)
    events: list[Event] = []
    call = '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    output.add_text(events, call)
    output.finish(events)
    assert events == [Token(call, 1)]
    assert output.reason(0, "stop") == "stop"


def test_choices_merge_only_with_their_own_text_and_end_each_their_way() -> None:
    output = JobOutput(job=job(params=SamplingParams(n=2), tools=TOOLS), chat_format=ChatFormat())
    output.start(in_reasoning=False)
    events: list[Event] = []
    output.add_text(events, "A")
    output.add(events, Emitted('<tool_call>{"name": "add"}</tool_call>', 1, ()))
    output.add_text(events, "B")
    output.add_text(events, "C")
    output.finish(events)
    sent = tokens(events)
    assert [(t.index, t.text, bool(t.tool_calls)) for t in sent] == [
        (0, "A", False),
        (1, "", True),
        (1, "", True),
        (0, "BC", False),
    ]
    assert [t.seq for t in sent] == [1, 2, 3, 4]
    outcome = Outcome(
        reason="stop",
        completion_tokens=9,
        choices=(
            ChoiceOutcome(index=0, reason="stop", completion_tokens=3),
            ChoiceOutcome(index=1, reason="stop", completion_tokens=6),
        ),
    )
    finished = output.finished(outcome, model="m", prompt_tokens=5)
    assert finished.reason == "stop"
    assert [(c.index, c.reason, c.completion_tokens) for c in finished.choices] == [
        (0, "stop", 3),
        (1, "tool_calls", 6),
    ]
    assert finished.completion_tokens == 9
    assert output.answer == "ABC"


def test_a_step_that_publishes_nothing_still_keeps_its_answer_without_thinking() -> None:
    output = JobOutput(job=job(publish_tokens=False), chat_format=ChatFormat(reasoning=True))
    output.start(in_reasoning=False)
    events: list[Event] = []
    output.add_text(events, "<think>plan</think>Answer")
    output.finish(events)
    assert events == []
    assert output.answer == "Answer"
