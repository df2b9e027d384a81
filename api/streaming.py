"""Server-sent events in OpenAI's chat.completion.chunk format.

A chunk per token is the hot path, so a chunk of choice 0's plain text is the request's fixed
JSON prefix, the JSON-encoded text and a fixed suffix, rather than a model built and dumped per
token; other choices, reasoning, tool calls and log probabilities take the general way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from api.answers import finish_reasons
from api.service import Queued, Restarted, StreamEvent
from worker.protocol import Finished, Progress, Summary, Token, TokenLogprob, ToolCallDelta

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

    def _chunk(
        self,
        delta: dict[str, Any],
        finish_reason: str | None,
        extra: dict[str, Any] | None = None,
        *,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        body: dict[str, Any] = {
            **self._base,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }
        if self._include_usage:
            body["usage"] = None
        if extra:
            body.update(extra)
        return sse(body)

    def role(self, index: int = 0) -> bytes:
        return self._chunk({"role": "assistant", "content": ""}, None, index=index)

    def content(self, text: str) -> bytes:
        """Choice 0's next text, and nothing else: the common chunk, from prebuilt bytes."""
        return self._content_prefix + _encode(text) + self._content_suffix

    def piece(self, token: Token, *, logprobs: bool) -> bytes:
        """Any piece of any choice: text, reasoning, tool call pieces, log probabilities."""
        delta: dict[str, Any] = {}
        if token.reasoning:
            delta["reasoning_content"] = token.reasoning
        if token.text or not (token.reasoning or token.tool_calls):
            delta["content"] = token.text
        if token.tool_calls:
            delta["tool_calls"] = [tool_call_delta(call) for call in token.tool_calls]
        entries = {"content": [logprob_entry(entry) for entry in token.logprobs]} if logprobs else None
        return self._chunk(delta, None, index=token.index, logprobs=entries)

    def finish(self, reason: str, *, index: int = 0, extra: dict[str, Any] | None = None) -> bytes:
        return self._chunk({}, reason, extra, index=index)

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


def tool_call_delta(call: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's streamed tool call: the first piece has its id, type and name, later ones arguments only."""
    if call.id is None:
        return {"index": call.index, "function": {"arguments": call.arguments}}
    return {
        "index": call.index,
        "id": call.id,
        "type": "function",
        "function": {"name": call.name or "", "arguments": call.arguments},
    }


def logprob_entry(entry: TokenLogprob) -> dict[str, Any]:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": entry.bytes,
        "top_logprobs": [{"token": top.token, "logprob": top.logprob, "bytes": top.bytes} for top in entry.top],
    }


class _Relay:
    """The chunks of each event of one answer, in order (see relay)."""

    def __init__(
        self,
        writer: ChunkWriter,
        *,
        include_usage: bool,
        extras: Callable[[Finished], tuple[int, int, dict[str, Any] | None]],
        n: int,
        logprobs: bool,
    ) -> None:
        self._writer = writer
        self._include_usage = include_usage
        self._extras = extras
        self._n = n
        self._logprobs = logprobs
        # Choices whose role chunk went out; each gets one before its first piece.
        self.started: set[int] = set()

    def chunks(self, event: StreamEvent) -> list[bytes]:
        writer = self._writer
        out: list[bytes] = []
        if isinstance(event, Token):
            index = event.index
            if index not in self.started:
                # It waits for the answer, so that it names the model that writes it.
                self.started.add(index)
                out.append(writer.role(index))
            if index == 0 and not (self._logprobs or event.reasoning or event.tool_calls):
                out.append(writer.content(event.text))
            else:
                out.append(writer.piece(event, logprobs=self._logprobs))
        elif isinstance(event, Finished):
            ends = finish_reasons(event, n=self._n)
            for index, _ in ends:
                if index not in self.started:
                    self.started.add(index)
                    out.append(writer.role(index))
            prompt_tokens, completion_tokens, fields = self._extras(event)
            for position, (index, reason) in enumerate(ends):
                out.append(writer.finish(reason, index=index, extra=fields if position == len(ends) - 1 else None))
            if self._include_usage:
                out.append(writer.usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))
        elif isinstance(event, Progress):
            out.append(comment(f"step {event.step} {event.state} on {event.model}"))
        elif isinstance(event, Queued):
            out.append(comment(f"queue position {event.position}"))
        elif isinstance(event, Restarted):
            # Nothing of the first run reached this client (else it would have failed).
            out.append(comment("the job runs again on another worker"))
        elif isinstance(event, Summary) and event.answer_model:
            writer.set_model(event.answer_model)
        return out


async def relay(
    events: AsyncIterator[StreamEvent],
    writer: ChunkWriter,
    *,
    include_usage: bool,
    extras: Callable[[Finished], tuple[int, int, dict[str, Any] | None]],
    n: int = 1,
    logprobs: bool = False,
    ready: Callable[[], bool] | None = None,
) -> AsyncIterator[bytes]:
    """Chunks for one answer's events, ending with each choice's finish_reason, usage and [DONE].

    `extras` gives, once the answer finished, the total token counts over every step and
    the fields (the orchestration summary) that go on the final chunk. Without `ready` each
    chunk is yielded on its own; with it, chunks are joined until no further event is ready
    (`ready()` is False), so events that arrived together leave in one write to the socket.
    """
    state = _Relay(writer, include_usage=include_usage, extras=extras, n=n, logprobs=logprobs)
    held: list[bytes] = []
    async for event in events:
        chunks = state.chunks(event)
        if ready is None:
            for chunk in chunks:
                yield chunk
            continue
        held.extend(chunks)
        # After the end only [DONE] follows: it goes in the same write.
        if held and not isinstance(event, Finished) and not ready():
            yield b"".join(held)
            held.clear()
    if not state.started:
        held.append(writer.role())
    held.append(DONE)
    if ready is None:
        for chunk in held:
            yield chunk
    else:
        yield b"".join(held)
