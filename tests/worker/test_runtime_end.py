"""A job's last events and its bookkeeping leave in one round trip, on the real Redis."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from tests.worker.events import run_collecting
from worker.keys import Keys
from worker.null_engine import NullEngine
from worker.presence import Presence
from worker.protocol import ChatJob, Finished, Message, SamplingParams, decode_event
from worker.runtime import WorkerRuntime

pytestmark = pytest.mark.redis


class RecordingRedis:
    """The real client, recording the commands of each round trip the runtime makes."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self.trips: list[list[tuple[bytes | str, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    def pipeline(self, *, transaction: bool = True) -> Any:
        pipe = self._redis.pipeline(transaction=transaction)
        execute = pipe.execute

        async def recorded(raise_on_error: bool = True) -> list[Any]:
            self.trips.append([tuple(args) for args, _ in pipe.command_stack])
            result: list[Any] = await execute(raise_on_error)
            return result

        pipe.execute = recorded  # type: ignore[method-assign]
        return pipe

    async def publish(self, channel: str, message: bytes) -> int:
        self.trips.append([("PUBLISH", channel, message)])
        count: int = await self._redis.publish(channel, message)
        return count


def chat_job(keys: Keys, request_id: str, *, stream: bool) -> ChatJob:
    return ChatJob(
        request_id=request_id,
        model="m",
        messages=[Message("user", "one two three four")],
        params=SamplingParams(max_tokens=4),
        channel=keys.events(request_id),
        priority=2,
        deadline_ms=int(time.time() * 1000) + 60_000,
        stream=stream,
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_the_final_event_goes_with_the_jobs_bookkeeping(redis: Redis, prefix: str, stream: bool) -> None:
    keys = Keys(prefix=prefix)
    recording = RecordingRedis(redis)
    client = cast(Redis, recording)
    presence = Presence(client, keys=keys, model="m", worker_id="w", ttl_s=30)
    runtime = WorkerRuntime(
        client,
        keys=keys,
        engines=[NullEngine(model_id="m")],
        presence=presence,
        worker_id="w",
        request_timeout_s=30,
    )
    await runtime.start()
    job = chat_job(keys, "r1", stream=stream)
    result, events = await run_collecting(runtime, redis, job)
    assert result is not None and result.text == "one two three four"
    assert isinstance(events[-1], Finished)

    def publishes_finish(trip: list[tuple[bytes | str, ...]]) -> bool:
        return any(c[0] == "PUBLISH" and isinstance(decode_event(cast(bytes, c[2])), Finished) for c in trip)

    ends = [index for index, trip in enumerate(recording.trips) if publishes_finish(trip)]
    assert len(ends) == 1
    last = recording.trips[ends[0]]
    names = [c[0] for c in last]
    # The end is the job's last round trip: its running entry, stream marker and last use go with it.
    assert ends[0] == len(recording.trips) - 1
    assert {"HDEL", "DEL", "ZADD", "SET"} <= set(names)
    assert not await redis.hexists(keys.running("m"), job.job_key)
    assert not await redis.exists(keys.sent(job.job_key))
    assert await redis.zscore(keys.last_used, "m") is not None
    kept = await redis.get(keys.done("r1"))
    assert kept is not None and isinstance(decode_event(kept), Finished)
