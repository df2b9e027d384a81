"""A validated chat request as the job a worker runs: messages, sampling, tools, output format."""

from __future__ import annotations

from api.protocol import ChatCompletionRequest, ChatMessageIn
from api.structured import ResponseFormatIn, chosen_tool
from worker.protocol import ChatJob, Message, ResponseFormat, SamplingParams, Tool, ToolCall


def job_for(
    request: ChatCompletionRequest,
    *,
    request_id: str,
    model: str,
    channel: str,
    priority: int,
    deadline_ms: int,
) -> ChatJob:
    params = SamplingParams(
        max_tokens=request.completion_limit(),
        temperature=0.7 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=request.stop_list(),
        seed=request.seed,
        frequency_penalty=request.frequency_penalty or 0.0,
        presence_penalty=request.presence_penalty or 0.0,
        n=request.choice_count(),
        logprobs=request.wants_logprobs(),
        top_logprobs=request.top_logprobs or 0,
    )
    return ChatJob(
        request_id=request_id,
        model=model,
        messages=messages_of(request.messages),
        params=params,
        channel=channel,
        priority=priority,
        deadline_ms=deadline_ms,
        task_type=request.task_type,
        orchestration_mode=request.orchestration_mode,
        stream=request.stream,
        response_format=response_format_of(request.response_format),
        tools=[
            Tool(
                name=tool.function.name,
                description=tool.function.description,
                parameters=tool.function.parameters,
                strict=bool(tool.function.strict),
            )
            for tool in request.tools or []
        ],
        tool_choice=chosen_tool(request.tool_choice),
        parallel_tool_calls=request.parallel_tool_calls is not False,
    )


def messages_of(messages: list[ChatMessageIn]) -> list[Message]:
    """The conversation for the worker; a tool's answer names its function when the client did not."""
    called: dict[str, str] = {}
    converted: list[Message] = []
    for message in messages:
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in message.tool_calls or []
        ]
        called.update((call.id, call.name) for call in calls)
        name = message.name
        if message.role == "tool" and name is None and message.tool_call_id is not None:
            name = called.get(message.tool_call_id)
        converted.append(
            Message(
                role="system" if message.role == "developer" else message.role,
                content=message.text(),
                name=name,
                tool_calls=calls,
                tool_call_id=message.tool_call_id,
            )
        )
    return converted


def response_format_of(requested: ResponseFormatIn | None) -> ResponseFormat | None:
    """None for plain text, the default."""
    if requested is None or requested.type == "text":
        return None
    if requested.json_schema is None:
        return ResponseFormat(type=requested.type)
    spec = requested.json_schema
    return ResponseFormat(type=requested.type, schema=spec.json_schema, name=spec.name, strict=bool(spec.strict))
