"""OpenAI wire types for the HTTP API: chat requests, completions, chunks, model lists."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from api.arguments import encodable, known_arguments, refused, shown
from api.structured import MAX_TOOLS, ResponseFormatIn, ToolChoice, ToolIn, check_tools

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
MAX_CHOICES = 4
MAX_TOP_LOGPROBS = 20
MAX_CALL_ID_CHARS = 256
# OpenAI's limits on metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


Content = Annotated[str, Field(max_length=MAX_CONTENT_CHARS), AfterValidator(encodable)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(encodable)]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_CHARS), AfterValidator(encodable)]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS), AfterValidator(encodable)]
User = Annotated[str, Field(max_length=MAX_USER_CHARS), AfterValidator(encodable)]
TaskType = Annotated[str, Field(max_length=MAX_TASK_TYPE_CHARS), AfterValidator(encodable)]
TokenLimit = Annotated[int, Field(ge=1, le=MAX_COMPLETION_TOKENS)]
CallId = Annotated[str, Field(max_length=MAX_CALL_ID_CHARS), AfterValidator(encodable)]
MetadataKey = Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS), AfterValidator(encodable)]
MetadataValue = Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS), AfterValidator(encodable)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Content


class FunctionCallIn(BaseModel):
    name: Name
    arguments: Content


class ToolCallIn(BaseModel):
    """A call an earlier assistant turn made, sent back with the conversation."""

    id: CallId
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(BaseModel):
    # An SDK sends a response's message back as it got it (refusal, audio, annotations, ...).
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: CallId | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessageIn:
        if self.tool_calls and self.role != "assistant":
            raise refused("Only assistant messages carry tool_calls.", param="tool_calls")
        if self.role == "tool" and self.tool_call_id is None:
            raise refused(
                "A message with role 'tool' needs the tool_call_id of the call it answers.", param="tool_call_id"
            )
        if self.role != "tool" and self.tool_call_id is not None:
            raise refused("Only messages with role 'tool' carry a tool_call_id.", param="tool_call_id")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False
    # OpenAI pads chunks against length side channels; there is nothing to pad here.
    include_obfuscation: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

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
    n: Annotated[int | None, Field(ge=1, le=MAX_CHOICES)] = None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=MAX_TOP_LOGPROBS)] = None
    response_format: ResponseFormatIn | None = None
    tools: Annotated[list[ToolIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Metadata about the caller: accepted, and nothing here depends on it.
    user: User | None = None
    safety_identifier: User | None = None
    prompt_cache_key: User | None = None
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=MAX_METADATA_PAIRS)] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    # Extensions of this service (see the README).
    task_type: TaskType | None = None
    orchestration_mode: Mode | None = None
    priority: Annotated[int | None, Field(ge=1, le=9)] = None

    @model_validator(mode="before")
    @classmethod
    def _only_known_arguments(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return known_arguments(data, fields=cls.model_fields)

    @model_validator(mode="after")
    def _arguments_agree(self) -> ChatCompletionRequest:
        check_tools(self.tools or [], self.tool_choice)
        check_tool_results(self.messages)
        if self.top_logprobs is not None and not self.logprobs:
            raise refused("top_logprobs needs logprobs set to true.", param="top_logprobs")
        mode = self.orchestration_mode
        if mode is not None and mode != "single":
            conflict = self.orchestration_conflict(mode)
            if conflict is not None:
                param, message = conflict
                raise refused(message, param=param)
        return self

    def stop_list(self) -> list[str]:
        stop = self.stop
        if stop is None:
            return []
        return [stop] if isinstance(stop, str) else list(stop)

    def completion_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def choice_count(self) -> int:
        return self.n or 1

    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)

    def orchestration_conflict(self, mode: str) -> tuple[str, str] | None:
        """The first argument an orchestrated answer cannot honour: (param, message), or None."""
        asked = [
            ("tools", bool(self.tools)),
            ("response_format", self.response_format is not None and self.response_format.type != "text"),
            ("logprobs", bool(self.logprobs)),
            ("n", self.choice_count() > 1),
        ]
        for param, used in asked:
            if used:
                return param, (
                    f"{param} cannot be used with orchestration_mode '{mode}': an orchestrated answer is "
                    "several models' work, not one model's sampled text. Use orchestration_mode 'single'."
                )
        return None


def check_tool_results(messages: list[ChatMessageIn]) -> None:
    """Each tool message answers a call an earlier assistant message made."""
    calls: set[str] = set()
    for index, message in enumerate(messages):
        calls.update(call.id for call in message.tool_calls or [])
        if message.role == "tool" and message.tool_call_id not in calls:
            raise refused(
                "A message with role 'tool' must answer a tool call of an earlier assistant message; "
                f"no call has the id '{shown(message.tool_call_id or '')}'.",
                param=f"messages.{index}.tool_call_id",
            )


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    # None when the answer is tool calls alone.
    content: str | None
    # A reasoning model's thinking, apart from its answer.
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: ChoiceLogprobs | None = None
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

    def wire(self) -> dict[str, Any]:
        """The JSON body: optional fields left out, but `content` and `logprobs` null as OpenAI sends them."""
        body = self.model_dump(exclude_none=True)
        body["choices"] = [
            {
                "index": choice["index"],
                "message": {"role": "assistant", "content": None} | choice["message"],
                "logprobs": choice.get("logprobs"),
                "finish_reason": choice["finish_reason"],
            }
            for choice in body["choices"]
        ]
        return body


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
