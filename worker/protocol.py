"""Wire types between fronts and workers: job payloads and token events, msgspec-encoded."""

from __future__ import annotations

from typing import Literal

import msgspec


class Message(msgspec.Struct, frozen=True):
    role: str
    content: str


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    max_tokens: int | None = None
    temperature: float = 0.7
    top_p: float = 1.0
    stop: list[str] = []
    seed: int | None = None
    # OpenAI's: subtract penalty * count (frequency) or penalty once (presence) from the
    # logit of every token already generated.
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


class ChatJob(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One generation on one model; the unit a worker consumes from its queue."""

    request_id: str
    model: str
    messages: list[Message]
    params: SamplingParams
    channel: str
    priority: int
    deadline_ms: int
    task_type: str | None = None
    orchestration_mode: str | None = None
    # Orchestration steps publish no text to the client, except the step that writes the answer.
    publish_tokens: bool = True
    dag_id: str | None = None
    step: str | None = None
    # The client reads the answer as it is written: once a token went out, a re-run on
    # another worker (after this one died) would show the client a second beginning.
    stream: bool = False

    @property
    def job_key(self) -> str:
        """Unique per job: a request's orchestration steps share its request id."""
        return self.request_id if self.step is None else f"{self.request_id}/{self.step}"


class Accepted(msgspec.Struct, frozen=True, tag="accepted", kw_only=True):
    """The worker took the job and the prompt fits the model's context."""

    model: str
    worker_id: str
    prompt_tokens: int


class Token(msgspec.Struct, frozen=True, tag="token"):
    text: str
    # 1, 2, ... per job, so a front sees a lost event; 0 where nobody counts (a DAG's stored answer).
    seq: int = 0


class Finished(msgspec.Struct, frozen=True, tag="finish", kw_only=True):
    reason: Literal["stop", "length", "cancelled"]
    model: str
    prompt_tokens: int
    completion_tokens: int
    # How many Token events came before this one (their last seq); 0 where nobody counts.
    tokens_sent: int = 0


class Failed(msgspec.Struct, frozen=True, tag="error", kw_only=True):
    code: str
    message: str
    status: int = 500
    param: str | None = None


class Progress(msgspec.Struct, frozen=True, tag="progress", kw_only=True):
    """An orchestration step started or finished; streamed to clients as an SSE comment.

    A finished step carries its token counts, so the response's usage sums every step.
    """

    step: str
    model: str
    state: Literal["started", "finished"]
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Summary(msgspec.Struct, frozen=True, tag="summary", kw_only=True):
    """How an orchestrated answer came about; sent just before the final answer's text."""

    mode: str
    models_used: list[str]
    rounds: int
    confidence: float
    low_confidence: bool | None = None
    # The model whose text is the answer (streamed chunks name it as their `model`).
    answer_model: str | None = None


Event = Accepted | Token | Finished | Failed | Progress | Summary

_job_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(ChatJob)
_event_encoder = msgspec.msgpack.Encoder()
_event_decoder = msgspec.msgpack.Decoder(Event)


def encode_job(job: ChatJob) -> bytes:
    return _job_encoder.encode(job)


def decode_job(data: bytes) -> ChatJob:
    return _job_decoder.decode(data)


def encode_event(event: Event) -> bytes:
    return _event_encoder.encode(event)


def decode_event(data: bytes) -> Event:
    event: Event = _event_decoder.decode(data)
    return event


def arq_serialize(obj: object) -> bytes:
    """arq's job envelope (function, args, tries) as msgpack instead of pickle."""
    return msgspec.msgpack.encode(obj)


def arq_deserialize(data: bytes) -> dict[str, object]:
    decoded: dict[str, object] = msgspec.msgpack.decode(data)
    return decoded
