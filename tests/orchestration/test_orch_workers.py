"""Whole DAGs on real worker processes (null backend) and the real Redis, with no front at all."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

from orchestration.start import read_dag, start_dag
from presets.settings import Settings
from tests.conftest import StartWorker
from tests.orchestration.harness import team
from tests.support import TEST_REDIS_URL
from worker.keys import Keys
from worker.protocol import (
    ChatJob,
    Event,
    Finished,
    Message,
    SamplingParams,
    Summary,
    Token,
    arq_deserialize,
    arq_serialize,
    decode_event,
)
from worker.queue import JobQueue, QueuePolicy

pytestmark = pytest.mark.redis
MODELS = ("smollm2-135m", "gemma3-270m")


async def run_dag(redis: ArqRedis, *, keys: Keys, settings: Settings, mode: str, content: str) -> list[Event]:
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    job = ChatJob(
        request_id=request_id,
        model="",
        messages=[Message("user", content)],
        params=SamplingParams(max_tokens=12),
        channel=keys.events(request_id),
        priority=2,
        deadline_ms=int(time.time() * 1000) + 60_000,
    )
    events: list[Event] = []
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(job.channel)
    try:
        await start_dag(
            JobQueue(redis, keys=keys),
            settings=settings,
            policy=QueuePolicy(),
            template=job,
            mode=mode,
            team=team(*MODELS),
        )
        deadline = time.monotonic() + 30
        while not events or not isinstance(events[-1], Finished):
            assert time.monotonic() < deadline, events
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                events.append(decode_event(message["data"]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    for _ in range(100):
        view = await read_dag(redis, keys=keys, dag_id=request_id)
        if view is not None and view.status != "running":
            break
        await asyncio.sleep(0.05)
    assert view is not None and view.status == "done", view
    assert view.final is not None
    assert view.final.text == "".join(e.text for e in events if isinstance(e, Token))
    return events


async def test_every_mode_runs_to_an_answer_without_a_front(start_worker: StartWorker, prefix: str) -> None:
    for model in MODELS:
        start_worker(model, INFERENCE_BACKEND="null")
    settings = Settings(key_prefix=prefix, redis_url=TEST_REDIS_URL, critique_max_rounds=2)
    keys = Keys(prefix=prefix)
    redis = ArqRedis(
        ConnectionPool.from_url(TEST_REDIS_URL), job_serializer=arq_serialize, job_deserializer=arq_deserialize
    )
    try:
        # The null model echoes its prompt, so the critic "writes" the score in the question.
        critique = await run_dag(
            redis, keys=keys, settings=settings, mode="critique", content="two plus two SCORE: 9/10"
        )
        summary = next(e for e in critique if isinstance(e, Summary))
        assert (summary.rounds, summary.confidence) == (1, 0.9)
        assert sorted(summary.models_used) == sorted(MODELS)
        assert "".join(e.text for e in critique if isinstance(e, Token)).startswith("two plus two")
        for mode in ("debate", "ensemble", "pipeline"):
            events = await run_dag(redis, keys=keys, settings=settings, mode=mode, content="alpha beta gamma")
            summaries = [e for e in events if isinstance(e, Summary)]
            assert len(summaries) == 1 and summaries[0].mode == mode, events
            first_token = next(i for i, e in enumerate(events) if isinstance(e, Token))
            assert events.index(summaries[0]) < first_token
    finally:
        await redis.aclose()
