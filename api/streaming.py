"""Server-sent events in OpenAI's chat.completion.chunk format.

A chunk per token is the hot path, so each chunk is the request's fixed JSON prefix,
the JSON-encoded text and a fixed suffix, rather than a model built and dumped per token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from api.service import Queued, Restarted, StreamEvent
from worker.protocol import Finished, Progress, Summary, Token

DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def comment(text: str) -> bytes:
    """An SSE comment line: OpenAI clients skip it, people and our tools can read it."""
    return b": " + text.replace("\n", " ").encode() + b"\n\n"


class ChunkWriter:
    def __init__(self, *, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._base = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
        self.set_model(model)

    def set_model(self, model: str) -> None:
        """Name the model that writes the answer (an orchestrated answer's is known late)."""
        self._base["model"] = model
        include_usage = self._include_usage
        head = dict(self._base)
        head_json = _encode(head)[:-1]  # drop the closing brace to append choices
        self._content_prefix = b"data: " + head_json + b',"choices":[{"index":0,"delta":{"content":'
        self._content_suffix = b'},"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}\n\n' if include_usage else b"}\n\n"
        )

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None, extra: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {
            **self._base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self._include_usage:
            body["usage"] = None
        if extra:
            body.update(extra)
        return sse(body)

    def role(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, None)

    def content(self, text: str) -> bytes:
        return self._content_prefix + _encode(text) + self._content_suffix

    def finish(self, reason: str, *, extra: dict[str, Any] | None = None) -> bytes:
        return self._chunk({}, reason, extra)

    def usage(self, *, prompt_tokens: int, completion_tokens: int) -> bytes:
        body: dict[str, Any] = {
            **self._base,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return sse(body)

    def error(self, body: dict[str, Any]) -> bytes:
        return sse(body)


async def relay(
    events: AsyncIterator[StreamEvent],
    writer: ChunkWriter,
    *,
    include_usage: bool,
    extras: Callable[[Finished], tuple[int, int, dict[str, Any] | None]],
) -> AsyncIterator[bytes]:
    """Chunks for one answer's events, ending with finish_reason, usage and [DONE].

    `extras` gives, once the answer finished, the total token counts over every step and
    the fields (the orchestration summary) that go on the final chunk.
    """
    started = False
    async for event in events:
        if isinstance(event, Progress):
            yield comment(f"step {event.step} {event.state} on {event.model}")
            continue
        if isinstance(event, Queued):
            yield comment(f"queue position {event.position}")
            continue
        if isinstance(event, Restarted):
            # Nothing of the first run reached this client (else it would have failed).
            yield comment("the job runs again on another worker")
            continue
        if isinstance(event, Summary):
            if event.answer_model:
                writer.set_model(event.answer_model)
            continue
        if not started:
            # The role chunk waits for the answer, so that it names the model that writes it.
            started = True
            yield writer.role()
        if isinstance(event, Token):
            yield writer.content(event.text)
        else:
            prompt_tokens, completion_tokens, fields = extras(event)
            yield writer.finish("stop" if event.reason == "cancelled" else event.reason, extra=fields)
            if include_usage:
                yield writer.usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    if not started:
        yield writer.role()
    yield DONE
