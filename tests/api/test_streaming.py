from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from api.service import Queued, StreamEvent
from api.streaming import ChunkWriter, relay
from worker.protocol import ChoiceEnd, Finished, Progress, Summary, Token, TokenLogprob, ToolCallDelta, TopLogprob


def parse(chunk: bytes) -> dict[str, object] | str:
    text = chunk.decode()
    assert text.endswith("\n\n")
    if text.startswith(": "):
        return text.strip()
    assert text.startswith("data: ")
    body = text[6:].strip()
    return body if body == "[DONE]" else json.loads(body)


async def events(*items: StreamEvent) -> AsyncIterator[StreamEvent]:
    for item in items:
        yield item


def test_content_chunk_matches_the_generic_chunk_shape() -> None:
    writer = ChunkWriter(request_id="chatcmpl-1", created=7, model="m", include_usage=True)
    fast = parse(writer.content('say "hi"\n'))
    assert fast == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 7,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": 'say "hi"\n'}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }


async def test_relay_orders_role_content_finish_usage_done_and_skips_nothing() -> None:
    writer = ChunkWriter(request_id="chatcmpl-1", created=7, model="orchestrated", include_usage=True)
    stream = events(
        Queued(2),
        Progress(step="r1.gen", model="a", state="started"),
        Summary(mode="critique", models_used=["a", "b"], rounds=1, confidence=0.8, answer_model="a"),
        Token("Hel"),
        Token("lo"),
        Finished(reason="stop", model="a", prompt_tokens=5, completion_tokens=2),
    )
    extras = {"orchestration": {"mode": "critique"}}
    chunks = [parse(c) async for c in relay(stream, writer, include_usage=True, extras=lambda f: (50, 20, extras))]
    assert chunks[0] == ": queue position 2"
    assert chunks[1] == ": step r1.gen started on a"
    role, first, second, finish, usage, done = chunks[2:]
    assert isinstance(role, dict) and role["choices"][0]["delta"] == {"role": "assistant", "content": ""}  # type: ignore[index]
    assert {c["model"] for c in (role, first, second, finish, usage)} == {"a"}  # type: ignore[index]
    assert [c["choices"][0]["delta"]["content"] for c in (first, second)] == ["Hel", "lo"]  # type: ignore[index]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["orchestration"] == {"mode": "critique"}  # type: ignore[index]
    assert usage["choices"] == [] and usage["usage"] == {  # type: ignore[index]
        "prompt_tokens": 50,
        "completion_tokens": 20,
        "total_tokens": 70,
    }
    assert done == "[DONE]"


async def test_without_include_usage_there_is_no_usage_chunk_nor_usage_field() -> None:
    writer = ChunkWriter(request_id="x", created=1, model="m", include_usage=False)
    stream = events(Token("a"), Finished(reason="length", model="m", prompt_tokens=1, completion_tokens=1))
    chunks = [parse(c) async for c in relay(stream, writer, include_usage=False, extras=lambda f: (1, 1, None))]
    assert len(chunks) == 4 and chunks[-1] == "[DONE]"
    assert all("usage" not in c for c in chunks[:-1])  # type: ignore[operator]
    assert chunks[2]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]


async def chunks_of(*items: StreamEvent, n: int = 1, logprobs: bool = False) -> list[Any]:
    writer = ChunkWriter(request_id="x", created=1, model="m", include_usage=False)
    stream = events(*items)
    return [
        parse(c)
        async for c in relay(stream, writer, include_usage=False, extras=lambda f: (1, 1, None), n=n, logprobs=logprobs)
    ]


def choice_of(chunk: Any) -> dict[str, Any]:
    choices = chunk["choices"]
    assert len(choices) == 1
    result: dict[str, Any] = choices[0]
    return result


async def test_plain_text_of_choice_zero_takes_the_prebuilt_bytes() -> None:
    writer = ChunkWriter(request_id="x", created=1, model="m", include_usage=True)
    stream = events(Token("a", 1), Finished(reason="stop", model="m", prompt_tokens=1, completion_tokens=1))
    raw = [c async for c in relay(stream, writer, include_usage=True, extras=lambda f: (1, 1, None))]
    assert raw[1] == writer.content("a")
    assert parse(writer.piece(Token("a"), logprobs=False)) == parse(writer.content("a"))


async def test_reasoning_and_answer_stream_as_their_own_delta_fields() -> None:
    chunks = await chunks_of(
        Token("", 1, reasoning="Think"),
        Token("", 2, reasoning=" more."),
        Token("Paris", 3),
        Finished(reason="stop", model="m", prompt_tokens=1, completion_tokens=3),
    )
    role, first, second, answer, finish, done = chunks
    assert choice_of(role)["delta"] == {"role": "assistant", "content": ""}
    assert [choice_of(c)["delta"] for c in (first, second, answer)] == [
        {"reasoning_content": "Think"},
        {"reasoning_content": " more."},
        {"content": "Paris"},
    ]
    assert choice_of(finish) == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert done == "[DONE]"


async def test_tool_calls_stream_as_openai_deltas() -> None:
    chunks = await chunks_of(
        Token("", 1, tool_calls=[ToolCallDelta(index=0, id="call_a", name="get_weather")]),
        Token("", 2, tool_calls=[ToolCallDelta(index=0, arguments='{"c":'), ToolCallDelta(index=1, id="c", name="f")]),
        Token("", 3, tool_calls=[ToolCallDelta(index=0, arguments='"Paris"}')]),
        Finished(reason="tool_calls", model="m", prompt_tokens=1, completion_tokens=3),
    )  # fmt: skip
    deltas = [choice_of(c)["delta"] for c in chunks[1:4]]
    assert deltas == [
        {"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
        ]},
        {"tool_calls": [
            {"index": 0, "function": {"arguments": '{"c":'}},
            {"index": 1, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}},
        ]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]  # fmt: skip
    assert choice_of(chunks[4])["finish_reason"] == "tool_calls"


async def test_logprobs_when_asked_ride_on_each_content_chunk() -> None:
    entry = TokenLogprob(
        "Hi", -0.25, [72, 105], [TopLogprob("Hi", -0.25, [72, 105]), TopLogprob("Yo", -2.0, [89, 111])]
    )
    chunks = await chunks_of(
        Token("Hi", 1, logprobs=[entry]),
        Finished(reason="stop", model="m", prompt_tokens=1, completion_tokens=1),
        logprobs=True,
    )
    role, content, finish, _ = chunks
    assert choice_of(role)["logprobs"] is None and choice_of(finish)["logprobs"] is None
    assert choice_of(content) == {
        "index": 0,
        "delta": {"content": "Hi"},
        "logprobs": {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
            {"token": "Yo", "logprob": -2.0, "bytes": [89, 111]},
        ]}]},
        "finish_reason": None,
    }  # fmt: skip


async def test_each_choice_gets_a_role_chunk_before_its_first_piece_and_a_finish_chunk() -> None:
    chunks = await chunks_of(
        Token("a", 1, index=0),
        Token("b", 2, index=1),
        Token("c", 3, index=0),
        Finished(
            reason="stop",
            model="m",
            prompt_tokens=1,
            completion_tokens=3,
            choices=[ChoiceEnd(0, "stop", 2), ChoiceEnd(1, "length", 1), ChoiceEnd(2, "stop", 0)],
        ),
        n=3,
    )
    seen = [(choice_of(c)["index"], choice_of(c)["delta"], choice_of(c)["finish_reason"]) for c in chunks[:-1]]
    assert seen == [
        (0, {"role": "assistant", "content": ""}, None),
        (0, {"content": "a"}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (1, {"content": "b"}, None),
        (0, {"content": "c"}, None),
        # A choice that wrote nothing still starts and ends.
        (2, {"role": "assistant", "content": ""}, None),
        (0, {}, "stop"),
        (1, {}, "length"),
        (2, {}, "stop"),
    ]
    assert chunks[-1] == "[DONE]"


async def test_events_that_arrived_together_leave_in_one_write() -> None:
    writer = ChunkWriter(request_id="x", created=1, model="m", include_usage=True)
    items: list[StreamEvent] = [
        Token("a"),
        Token("b"),
        Token("c"),
        Finished(reason="stop", model="m", prompt_tokens=1, completion_tokens=3),
    ]
    # Tokens a and b were in the inbox together; c came on its own, then the end.
    ready_after = iter([True, False, False])
    grouped = [
        c
        async for c in relay(
            events(*items), writer, include_usage=True, extras=lambda f: (1, 3, None), ready=lambda: next(ready_after)
        )
    ]
    alone = [c async for c in relay(events(*items), writer, include_usage=True, extras=lambda f: (1, 3, None))]
    assert b"".join(grouped) == b"".join(alone)
    # role + a + b, then c, then the finish, usage and [DONE] together.
    assert [g.count(b"\n\n") for g in grouped] == [3, 1, 3]
    assert len(alone) == 7
