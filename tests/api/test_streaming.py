from __future__ import annotations

import json
from collections.abc import AsyncIterator

from api.service import Queued, StreamEvent
from api.streaming import ChunkWriter, relay
from worker.protocol import Finished, Progress, Summary, Token


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
