"""OpenAI wire types for the HTTP API: chat requests, completions, chunks, model lists."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Mode = Literal["single", "critique", "debate", "ensemble", "pipeline"]

# Caps on what one request may carry (docs/security.md). The body limit bounds the total; these
# bound the parts whose cost grows faster than their size (stop strings are matched against the
# tail of the output at every token) and keep every value inside what msgpack and llama.cpp take.
MAX_MESSAGES = 1024
MAX_CONTENT_CHARS = 1_048_576
MAX_CONTENT_PARTS = 256
MAX_NAME_CHARS = 256
MAX_MODEL_CHARS = 256
MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 256
MAX_USER_CHARS = 256
MAX_TASK_TYPE_CHARS = 64
# Above any model's context; a limit above the serving model's own context is refused later.
MAX_COMPLETION_TOKENS = 1_048_576
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _encodable(value: str) -> str:
    # JSON's \ud800 escapes decode to lone surrogates, which UTF-8 (msgpack, the tokenizer,
    # our own error messages) cannot encode.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Content = Annotated[str, Field(max_length=MAX_CONTENT_CHARS), AfterValidator(_encodable)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_encodable)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_CHARS), AfterValidator(_encodable)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS), AfterValidator(_encodable)]
User = Annotated[str, Field(max_length=MAX_USER_CHARS), AfterValidator(_encodable)]
TaskType = Annotated[str, Field(max_length=MAX_TASK_TYPE_CHARS), AfterValidator(_encodable)]
TokenLimit = Annotated[int, Field(ge=1, le=MAX_COMPLETION_TOKENS)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Content


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: Name | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: ModelName
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenLimit | None = None
    max_completion_tokens: TokenLimit | None = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(ge=0, le=1)] = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    # OpenAI's range; llama.cpp keeps the low 32 bits.
    seed: Annotated[int | None, Field(ge=INT64_MIN, le=INT64_MAX)] = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    user: User | None = None
    # Extensions of this service (see the README).
    task_type: TaskType | None = None
    orchestration_mode: Mode | None = None
    priority: Annotated[int | None, Field(ge=1, le=9)] = None

    def stop_list(self) -> list[str]:
        stop = self.stop
        if stop is None:
            return []
        return [stop] if isinstance(stop, str) else list(stop)

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OrchestrationInfo(BaseModel):
    mode: str
    models_used: list[str]
    rounds: int
    confidence: float
    low_confidence: bool | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    orchestration: OrchestrationInfo | None = None


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "inference-service"
    status: str
    memory_mb: int | None = None
    context_length: int | None = None
    roles: list[str] = []
    workers: int = 0


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    config: str | None = None
    orchestration_mode: str | None = None


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error this service answers with: OpenAI's error object."""

    error: ErrorDetail


class Readiness(BaseModel):
    """/health/ready: ready, or not_ready with the reason and the preset's models loaded so far."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ready", "not_ready"]
    reason: str | None = None
    progress: str | None = None
    config: str | None = None
    loaded_models: list[str] | None = None
    orchestration_mode: str | None = None
