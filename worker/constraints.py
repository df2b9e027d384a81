"""What a job asks of its engine beyond the messages, and the 400s for what cannot be done.

The sampler's grammar comes from the job: its response_format (JSON, or JSON valid against a
schema), or its tool_choice ("required" or a named function: calls in the model family's
format whose arguments follow the function's parameters). "auto" with a response_format lets
the model either answer in that format or call a tool; "auto" alone leaves the text free and
holds a call the model starts to the same grammar (a lazy grammar, bound at the call's marker).
A model that thinks first gets its thinking in front of the grammar once the prompt shows
whether the template opened it.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from worker.engine import PromptRejected, PromptTooLong, UnsupportedParameter
from worker.grammar import InvalidSchema, response_format_grammar
from worker.protocol import ChatJob, Failed, SamplingParams, Tool
from worker.tool_formats import ChatFormat, call_triggers, calls_grammar, reasoning_grammar, union_grammar

Refusal = PromptTooLong | PromptRejected | InvalidSchema | UnsupportedParameter
# What preparing a job may raise that is the client's to fix: a 400, before the job is accepted.
REFUSALS = (PromptTooLong, PromptRejected, InvalidSchema, UnsupportedParameter)


def rendered_tools(job: ChatJob) -> Sequence[Tool]:
    """The tools the prompt lists: none where the client asked for no calls, so the model answers in text."""
    return job.tools if job.tool_choice != "none" else ()


def constrained_params(job: ChatJob, chat_format: ChatFormat) -> SamplingParams:
    """The job's sampling parameters with the grammar it asks for.

    InvalidSchema for a response_format schema no grammar can be made from; UnsupportedParameter
    for a tool_choice naming no listed tool, or tools whose parameters make no grammar.
    """
    answer = response_format_grammar(job.response_format)
    choice = job.tool_choice
    grammar = answer
    triggers: list[str] = []
    if job.tools and choice != "none":
        if choice in ("auto", "required"):
            tools: Sequence[Tool] = job.tools
        else:
            tools = [t for t in job.tools if t.name == choice]
            if not tools:
                raise UnsupportedParameter(
                    f"tool_choice names the function {choice!r}, which is not among the tools", param="tool_choice"
                )
        try:
            calls = calls_grammar(
                chat_format.tool_format, tools, parallel=job.parallel_tool_calls and choice in ("auto", "required")
            )
        except InvalidSchema as exc:
            if choice == "auto" and answer is None and not any(t.strict for t in tools):
                # Nothing forces a call: it is parsed as written, as without a grammar.
                return job.params
            message = f"A tool's parameters cannot constrain its calls: {exc}"
            raise UnsupportedParameter(message, param="tools") from None
        if choice == "auto" and answer is not None:
            grammar = union_grammar(answer, calls)
        else:
            grammar = calls
            if choice == "auto":
                # The model may answer in text; a call it starts must be well-formed, arguments and all.
                triggers = call_triggers(chat_format.tool_format)
    if grammar is None:
        return job.params
    return msgspec.structs.replace(
        job.params,
        grammar=grammar,
        grammar_triggers=triggers,
        lazy_grammar_required=bool(triggers) and any(t.strict for t in job.tools),
    )


def with_reasoning(params: SamplingParams, *, chat_format: ChatFormat, in_reasoning: bool) -> SamplingParams:
    """Room for the thinking before the grammar's answer, for a model that thinks.

    A lazy grammar needs none: it binds only where a call begins, after the thinking.
    """
    if params.grammar is None or params.grammar_triggers or not (in_reasoning or chat_format.reasoning):
        return params
    return msgspec.structs.replace(params, grammar=reasoning_grammar(params.grammar, opened=in_reasoning))


def refusal_event(exc: Refusal) -> Failed:
    """The client's 400 for a job the worker cannot run as asked."""
    if isinstance(exc, PromptTooLong):
        return Failed(code="context_length_exceeded", message=str(exc), status=400, param="messages")
    if isinstance(exc, PromptRejected):
        return Failed(code="invalid_messages", message=str(exc), status=400, param="messages")
    if isinstance(exc, InvalidSchema):
        return Failed(
            code="invalid_schema", message=f"Invalid response_format schema: {exc}", status=400, param="response_format"
        )
    return Failed(code="unsupported_parameter", message=str(exc), status=400, param=exc.param)
