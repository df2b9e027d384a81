"""The runtime with a scripted engine on the real Redis: tool calls, thinking, choices, grammars, 400s."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from tests.worker.events import run_collecting
from worker.engine import ChoiceOutcome, Emit, Outcome, Prompt, UnsupportedParameter
from worker.keys import Keys
from worker.presence import Presence
from worker.protocol import (
    Accepted,
    ChatJob,
    Event,
    Failed,
    Finished,
    Message,
    ResponseFormat,
    SamplingParams,
    Token,
    Tool,
    ToolCallDelta,
)
from worker.runtime import StepResult, WorkerRuntime
from worker.tool_formats import ChatFormat

pytestmark = pytest.mark.redis

WEATHER = Tool(
    name="get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@dataclass
class ScriptedEngine:
    """Emits its script, (text, choice) by (text, choice), and remembers what it was asked."""

    script: list[tuple[str, int]]
    in_reasoning: bool = False
    refuse: UnsupportedParameter | None = None
    model_id: str = "m"
    context_length: int = 2048
    backend: str = "null"
    params: list[SamplingParams] = field(default_factory=list)
    tools: list[Sequence[Tool]] = field(default_factory=list)
    generated: int = 0

    def prepare(self, messages: Sequence[Message], params: SamplingParams, *, tools: Sequence[Tool] = ()) -> Prompt:
        if self.refuse is not None:
            raise self.refuse
        self.params.append(params)
        self.tools.append(tools)
        return Prompt(tokens=[1, 2, 3], stop=[], in_reasoning=self.in_reasoning)

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        self.generated += 1
        self.params.append(params)
        for text, index in self.script:
            emit(text, index=index)
        if params.n == 1:
            return Outcome(reason="stop", completion_tokens=len(self.script))
        ends = tuple(
            ChoiceOutcome(index=i, reason="stop", completion_tokens=sum(1 for _, c in self.script if c == i))
            for i in range(params.n)
        )
        return Outcome(reason="stop", completion_tokens=len(self.script), choices=ends)

    def close(self) -> None:
        return None


async def run_job(
    redis: Redis, prefix: str, engine: ScriptedEngine, chat_format: ChatFormat | None = None, **fields: object
) -> tuple[StepResult | None, list[Event]]:
    keys = Keys(prefix=prefix)
    presence = Presence(redis, keys=keys, model="m", worker_id="w", ttl_s=30)
    runtime = WorkerRuntime(
        redis,
        keys=keys,
        engines=[engine],
        presence=presence,
        worker_id="w",
        request_timeout_s=30,
        chat_format=chat_format or ChatFormat(),
    )
    job = ChatJob(
        **{  # type: ignore[arg-type]
            "request_id": "r1",
            "model": "m",
            "messages": [Message("user", "Weather in Paris?")],
            "params": SamplingParams(),
            "channel": keys.events("r1"),
            "priority": 2,
            "deadline_ms": int(time.time() * 1000) + 60_000,
            **fields,
        }
    )
    result, events = await run_collecting(runtime, redis, job)
    return result, events


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


async def test_a_call_in_the_text_goes_out_as_tool_call_deltas_and_ends_for_tool_calls(
    redis: Redis, prefix: str
) -> None:
    script = [("Checking", 0), (". ", 0), *[(CALL[i : i + 5], 0) for i in range(0, len(CALL), 5)]]
    engine = ScriptedEngine(script=script)
    result, events = await run_job(redis, prefix, engine, tools=[WEATHER])
    assert isinstance(events[0], Accepted)
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.text for t in tokens) == "Checking. "
    deltas = [d for t in tokens for d in t.tool_calls]
    assert [(d.index, d.name, d.arguments) for d in deltas] == [
        (0, "get_weather", ""),
        (0, None, '{"city": "Paris"}'),
    ]
    assert deltas[0].id is not None and deltas[0].id.startswith("call_")
    assert [t.seq for t in tokens] == list(range(1, len(tokens) + 1))
    end = events[-1]
    assert isinstance(end, Finished)
    assert (end.reason, end.tokens_sent, end.choices) == ("tool_calls", len(tokens), [])
    assert result is not None and (result.text, result.reason) == ("Checking. ", "tool_calls")
    # "auto" without a response_format leaves the text free: the calls' grammar binds only from a call's marker.
    assert engine.params[0].eager_grammar is None and engine.params[0].grammar_triggers
    assert engine.tools[0] == [WEATHER]


async def test_thinking_streams_as_reasoning_and_the_step_result_keeps_only_the_answer(
    redis: Redis, prefix: str
) -> None:
    script = [("Paris is", 0), (" in France.", 0), ("\n</think>\n\n", 0), ("It is sunny.", 0)]
    engine = ScriptedEngine(script=script, in_reasoning=True)
    result, events = await run_job(redis, prefix, engine)
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.reasoning for t in tokens) == "Paris is in France."
    assert "".join(t.text for t in tokens) == "It is sunny."
    assert result is not None and result.text == "It is sunny."
    end = events[-1]
    assert isinstance(end, Finished) and end.reason == "stop"


async def test_n_choices_stream_with_their_index_and_end_with_each_choice(redis: Redis, prefix: str) -> None:
    engine = ScriptedEngine(script=[("a", 0), ("b", 1), ("a2", 0), ("b2", 1)])
    result, events = await run_job(redis, prefix, engine, params=SamplingParams(n=2))
    tokens = [e for e in events if isinstance(e, Token)]
    assert "".join(t.text for t in tokens if t.index == 0) == "aa2"
    assert "".join(t.text for t in tokens if t.index == 1) == "bb2"
    end = events[-1]
    assert isinstance(end, Finished)
    assert [(c.index, c.reason, c.completion_tokens) for c in end.choices] == [(0, "stop", 2), (1, "stop", 2)]
    assert end.completion_tokens == 4
    assert result is not None and result.text == "aa2"


async def test_required_tools_constrain_a_thinking_model_to_think_then_call(redis: Redis, prefix: str) -> None:
    engine = ScriptedEngine(script=[("hmm</think>", 0), (CALL, 0)], in_reasoning=True)
    _, events = await run_job(
        redis, prefix, engine, ChatFormat(reasoning=True), tools=[WEATHER], tool_choice="get_weather"
    )
    prepared, generated = engine.params
    assert prepared.grammar is not None and '\\"get_weather\\"' in prepared.grammar
    assert "thinktext" not in prepared.grammar
    # Once the prompt showed the template opened the thinking, the grammar starts inside it.
    assert generated.grammar is not None and generated.grammar.startswith('root ::= thinktext "</think>"')
    deltas = [d for e in events if isinstance(e, Token) for d in e.tool_calls]
    assert deltas[1] == ToolCallDelta(index=0, arguments='{"city": "Paris"}')


async def test_a_json_response_format_sets_a_grammar(redis: Redis, prefix: str) -> None:
    engine = ScriptedEngine(script=[("{}", 0)])
    await run_job(redis, prefix, engine, response_format=ResponseFormat(type="json_object"))
    assert engine.params[0].grammar is not None and engine.params[0].grammar.startswith("root ::= object")


async def test_a_schema_no_grammar_can_follow_is_a_400_naming_response_format(redis: Redis, prefix: str) -> None:
    engine = ScriptedEngine(script=[("x", 0)])
    bad = ResponseFormat(type="json_schema", schema={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})
    result, events = await run_job(redis, prefix, engine, response_format=bad)
    assert result is None
    assert len(events) == 1
    failed = events[0]
    assert isinstance(failed, Failed)
    assert (failed.status, failed.param) == (400, "response_format")
    assert engine.generated == 0


async def test_a_parameter_the_engine_cannot_honour_is_a_400_naming_it(redis: Redis, prefix: str) -> None:
    engine = ScriptedEngine(script=[], refuse=UnsupportedParameter("no logprobs here", param="logprobs"))
    result, events = await run_job(redis, prefix, engine, params=SamplingParams(logprobs=True))
    assert result is None
    failed = events[0]
    assert isinstance(failed, Failed)
    assert (failed.status, failed.code, failed.param, failed.message) == (
        400,
        "unsupported_parameter",
        "logprobs",
        "no logprobs here",
    )


async def test_a_named_function_that_is_not_a_tool_is_a_400_naming_tool_choice(redis: Redis, prefix: str) -> None:
    engine = ScriptedEngine(script=[("x", 0)])
    _, events = await run_job(redis, prefix, engine, tools=[WEATHER], tool_choice="get_time")
    failed = events[0]
    assert isinstance(failed, Failed) and (failed.status, failed.param) == (400, "tool_choice")
    assert engine.generated == 0
