"""A non-streamed answer assembled from a job's Token events, as the OpenAI SDK reads it."""

from __future__ import annotations

import json
from typing import Any

from api.answers import AnswerBuilder, finish_reasons
from api.protocol import ChatCompletion, usage_of
from worker.protocol import ChoiceEnd, Finished, Token, TokenLogprob, ToolCallDelta, TopLogprob


def finished(reason: Any = "stop", *choices: ChoiceEnd) -> Finished:
    return Finished(reason=reason, model="m", prompt_tokens=3, completion_tokens=4, choices=list(choices))


def wire(answer: AnswerBuilder, finish: Finished) -> dict[str, Any]:
    completion = ChatCompletion(
        id="chatcmpl-1", created=1, model="m", choices=answer.choices(finish), usage=usage_of(3, 4)
    )
    body: dict[str, Any] = json.loads(json.dumps(completion.wire()))
    return body


def lp(token: str, logprob: float, *top: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(token, logprob, list(token.encode()), [TopLogprob(t, p, list(t.encode())) for t, p in top])


def test_plain_text_is_joined_and_optional_fields_stay_out() -> None:
    answer = AnswerBuilder()
    for seq, text in enumerate(["Par", "is", "."], start=1):
        answer.add(Token(text, seq))
    body = wire(answer, finished("length"))
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris."},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_an_empty_answer_is_empty_text_not_null() -> None:
    body = wire(AnswerBuilder(), finished())
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}


def test_reasoning_goes_to_reasoning_content_and_the_answer_to_content() -> None:
    answer = AnswerBuilder()
    answer.add(Token("", 1, reasoning="The user asks "))
    answer.add(Token("", 2, reasoning="for a city."))
    answer.add(Token("Paris", 3))
    message = wire(answer, finished())["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Paris", "reasoning_content": "The user asks for a city."}


def test_tool_call_pieces_join_by_their_index_and_content_is_null() -> None:
    answer = AnswerBuilder()
    answer.add(Token("", 1, tool_calls=[ToolCallDelta(index=0, id="call_a", name="get_weather")]))
    answer.add(
        Token(
            "",
            2,
            tool_calls=[
                ToolCallDelta(index=0, arguments='{"city": '),
                ToolCallDelta(index=1, id="call_b", name="get_time", arguments="{"),
            ],
        )
    )
    answer.add(
        Token("", 3, tool_calls=[ToolCallDelta(index=1, arguments="}"), ToolCallDelta(index=0, arguments='"Paris"}')])
    )
    choice = wire(answer, finished("tool_calls"))["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }  # fmt: skip


def test_text_before_a_tool_call_stays_as_content() -> None:
    answer = AnswerBuilder()
    answer.add(Token("Let me look.", 1))
    answer.add(Token("", 2, tool_calls=[ToolCallDelta(index=0, id="call_a", name="f", arguments="{}")]))
    message = wire(answer, finished("tool_calls"))["choices"][0]["message"]
    assert message["content"] == "Let me look." and len(message["tool_calls"]) == 1


def test_logprobs_when_asked_cover_each_content_token() -> None:
    answer = AnswerBuilder(logprobs=True)
    answer.add(Token("Hi", 1, logprobs=[lp("Hi", -0.1, ("Hi", -0.1), ("Hello", -2.5))]))
    answer.add(Token("!", 2, logprobs=[lp("!", -0.5, ("!", -0.5), (".", -1.0))]))
    choice = wire(answer, finished())["choices"][0]
    assert choice["logprobs"] == {
        "content": [
            {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
                {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                {"token": "Hello", "logprob": -2.5, "bytes": [72, 101, 108, 108, 111]},
            ]},
            {"token": "!", "logprob": -0.5, "bytes": [33], "top_logprobs": [
                {"token": "!", "logprob": -0.5, "bytes": [33]},
                {"token": ".", "logprob": -1.0, "bytes": [46]},
            ]},
        ]
    }  # fmt: skip
    assert "".join(entry["token"] for entry in choice["logprobs"]["content"]) == choice["message"]["content"]
    assert wire(AnswerBuilder(logprobs=True), finished())["choices"][0]["logprobs"] == {"content": []}


def test_n_choices_come_in_order_of_index_each_with_its_own_end() -> None:
    answer = AnswerBuilder(n=3)
    answer.add(Token("b", 1, index=1))
    answer.add(Token("a", 2, index=0))
    answer.add(Token("b", 3, index=1))
    finish = finished("stop", ChoiceEnd(1, "length", 2), ChoiceEnd(0, "stop", 1), ChoiceEnd(2, "cancelled", 0))
    choices = wire(answer, finish)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "a", "stop"),
        (1, "bb", "length"),
        (2, "", "stop"),
    ]


def test_a_restart_forgets_every_choice() -> None:
    answer = AnswerBuilder(n=2)
    answer.add(Token("old", 1, index=1, reasoning="old"))
    answer.add(Token("old", 2, tool_calls=[ToolCallDelta(index=0, id="call_x", name="f")]))
    answer.restart()
    answer.add(Token("new", 1))
    choices = wire(answer, finished())["choices"]
    assert [c["message"] for c in choices] == [
        {"role": "assistant", "content": "new"},
        {"role": "assistant", "content": ""},
    ]


def test_finish_reasons_fill_every_choice() -> None:
    assert finish_reasons(finished("tool_calls"), n=1) == [(0, "tool_calls")]
    assert finish_reasons(finished("cancelled"), n=2) == [(0, "stop"), (1, "stop")]
    assert finish_reasons(finished("stop", ChoiceEnd(1, "length", 5), ChoiceEnd(0, "stop", 2)), n=2) == [
        (0, "stop"),
        (1, "length"),
    ]
