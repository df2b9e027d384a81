"""A conversation the model's chat template refuses fails its job with a 400, on the real Redis."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from worker.engine import Emit, Outcome, Prompt, PromptRejected
from worker.keys import Keys
from worker.presence import Presence
from worker.protocol import ChatJob, Failed, Message, SamplingParams, Tool, decode_event
from worker.runtime import WorkerRuntime

pytestmark = pytest.mark.redis


class RefusingEngine:
    """Refuses two user turns in a row, as templates that insist on alternating roles do."""

    model_id = "m"
    context_length = 2048
    backend = "null"

    def __init__(self) -> None:
        self.generated = 0

    def prepare(self, messages: Sequence[Message], params: SamplingParams, *, tools: Sequence[Tool] = ()) -> Prompt:
        roles = [m.role for m in messages]
        if any(a == b for a, b in itertools.pairwise(roles)):
            raise PromptRejected("Conversation roles must alternate user/assistant/user/assistant/...")
        return Prompt(tokens=[1, 2], stop=[], script=("ok",))

    def generate(self, prompt: Prompt, params: SamplingParams, *, cancel: threading.Event, emit: Emit) -> Outcome:
        self.generated += 1
        emit("ok")
        return Outcome(reason="stop", completion_tokens=1)

    def close(self) -> None:
        return None


async def test_a_rejected_conversation_is_a_400_naming_the_problem(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix=prefix)
    engine = RefusingEngine()
    presence = Presence(redis, keys=keys, model="m", worker_id="w", ttl_s=30)
    runtime = WorkerRuntime(redis, keys=keys, engines=[engine], presence=presence, worker_id="w", request_timeout_s=30)
    job = ChatJob(
        request_id="r1",
        model="m",
        messages=[Message("user", "one"), Message("user", "two")],
        params=SamplingParams(),
        channel=keys.events("r1"),
        priority=2,
        deadline_ms=int(time.time() * 1000) + 60_000,
    )
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(job.channel)
    await pubsub.get_message(timeout=1.0)
    try:
        assert await runtime.run(job) is None
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10.0)
    finally:
        await pubsub.aclose()
        await runtime.stop()
    assert message is not None
    event = decode_event(message["data"])
    assert isinstance(event, Failed)
    assert (event.status, event.code, event.param) == (400, "invalid_messages", "messages")
    assert "roles must alternate" in event.message
    assert engine.generated == 0
