"""SmolLM2-135M on the batched engine behind the runtime: a required tool call is a valid call."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from presets.embedded import resolve_embedded
from tests.worker.events import run_collecting
from worker.batched_engine import BatchedLlamaEngine
from worker.keys import Keys
from worker.presence import Presence
from worker.protocol import ChatJob, Finished, Message, SamplingParams, Token, Tool
from worker.runtime import WorkerRuntime

pytestmark = [pytest.mark.model, pytest.mark.redis]

WEATHER = Tool(
    name="get_weather",
    description="The current weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
ADD = Tool(name="add", description="Add two numbers", parameters={"type": "object", "properties": {}})


@pytest.fixture
def engine(tmp_path: Path) -> BatchedLlamaEngine:
    """Closed by the runtime's stop, as a worker's engines are."""
    path = resolve_embedded("smollm2-135m", models_dir=tmp_path)
    return BatchedLlamaEngine(model_id="smollm2-135m", path=path, n_ctx=2048, slots=1, n_threads=2, gpu_layers=0)


async def test_required_tool_choice_yields_a_call_whose_arguments_follow_the_schema(
    redis: Redis, prefix: str, engine: BatchedLlamaEngine
) -> None:
    keys = Keys(prefix=prefix)
    presence = Presence(redis, keys=keys, model="smollm2-135m", worker_id="w", ttl_s=30)
    runtime = WorkerRuntime(redis, keys=keys, engines=[engine], presence=presence, worker_id="w", request_timeout_s=120)
    job = ChatJob(
        request_id="r1",
        model="smollm2-135m",
        messages=[Message("user", "What is the weather like in Paris today?")],
        params=SamplingParams(max_tokens=64, temperature=0.0),
        channel=keys.events("r1"),
        priority=2,
        deadline_ms=int(time.time() * 1000) + 120_000,
        tools=[ADD, WEATHER],
        tool_choice="get_weather",
        parallel_tool_calls=False,
    )
    result, events = await run_collecting(runtime, redis, job)
    end = events[-1]
    assert isinstance(end, Finished), end
    assert end.reason == "tool_calls"
    deltas = [d for e in events if isinstance(e, Token) for d in e.tool_calls]
    assert len(deltas) == 2
    first, rest = deltas
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "")
    assert first.id is not None and first.id.startswith("call_")
    arguments = json.loads(rest.arguments)
    assert set(arguments) == {"city", "unit"}
    assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 30
    assert arguments["unit"] in ("celsius", "fahrenheit")
    # The call is not the answer: orchestration sees no call text.
    assert result is not None and result.text == ""
