"""Wire types between fronts and workers: job payloads and token events, msgspec-encoded."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ToolCall(msgspec.Struct, frozen=True):
    """A function call an assistant made: OpenAI's `tool_calls[]` entry, arguments as JSON text."""

    id: str
    name: str
    arguments: str


class Message(msgspec.Struct, frozen=True, omit_defaults=True):
    role: str
    content: str
    name: str | None = None
    # An assistant turn that called tools, and a "tool" turn's answer to one of those calls.
    tool_calls: list[ToolCall] = []
    tool_call_id: str | None = None


class Tool(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A function the model may call; `parameters` is its arguments' JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    # OpenAI's strict: the arguments of every call must follow `parameters`, whatever tool_choice.
    strict: bool = False


class ResponseFormat(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """OpenAI's response_format: "json_object", or "json_schema" with the schema the output must satisfy."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False


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
    # Choices sampled from one prompt (they share its prefill).
    n: int = 1
    # Log probabilities of each sampled token, with this many alternatives (OpenAI's top_logprobs).
    logprobs: bool = False
    top_logprobs: int = 0
    # GBNF the sampler enforces; set by the worker from the job's response_format or tool_choice.
    grammar: str | None = None
    # With patterns, the grammar is lazy (llama.cpp's): the text is free until one matches, and
    # from the match's first group on it must follow the grammar (a tool call the model starts).
    grammar_triggers: list[str] = []
    # A strict tool needs even the lazy grammar held: a backend without lazy grammars refuses the
    # request rather than let a call through unchecked.
    lazy_grammar_required: bool = False

    @property
    def eager_grammar(self) -> str | None:
        """The grammar where it binds from the first token (not a lazy one), for backends without lazy grammars."""
        return None if self.grammar_triggers else self.grammar


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
    response_format: ResponseFormat | None = None
    tools: list[Tool] = []
    # "none", "auto", "required", or the name of the one function the model must call.
    tool_choice: str = "auto"
    parallel_tool_calls: bool = True

    @property
    def job_key(self) -> str:
        """Unique per job: a request's orchestration steps share its request id."""
        return self.request_id if self.step is None else f"{self.request_id}/{self.step}"


class Accepted(msgspec.Struct, frozen=True, tag="accepted", kw_only=True):
    """The worker took the job and the prompt fits the model's context."""

    model: str
    worker_id: str
    prompt_tokens: int


class TopLogprob(msgspec.Struct, frozen=True, array_like=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """One sampled token: its text, log probability, UTF-8 bytes and the likeliest alternatives."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob] = []


class ToolCallDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A piece of a tool call as OpenAI streams it: the first names it (id, name), later ones add arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Token(msgspec.Struct, frozen=True, tag="token", omit_defaults=True):
    """The next piece of one choice: answer text, reasoning text, tool call pieces, log probabilities."""

    text: str
    # 1, 2, ... per job, so a front sees a lost event; 0 where nobody counts (a DAG's stored answer).
    seq: int = 0
    # The choice (0 .. n-1) this piece belongs to.
    index: int = 0
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = []
    logprobs: list[TokenLogprob] = []


FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


class ChoiceEnd(msgspec.Struct, frozen=True, array_like=True):
    index: int
    reason: FinishReason
    completion_tokens: int


class Finished(msgspec.Struct, frozen=True, tag="finish", kw_only=True):
    # Choice 0's reason; completion_tokens counts every choice's tokens.
    reason: FinishReason
    model: str
    prompt_tokens: int
    completion_tokens: int
    # How many Token events came before this one (their last seq); 0 where nobody counts.
    tokens_sent: int = 0
    # With n > 1, how each choice ended.
    choices: list[ChoiceEnd] = []


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
