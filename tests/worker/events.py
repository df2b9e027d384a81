"""Running one job on a WorkerRuntime and reading back every event it published."""

from __future__ import annotations

from redis.asyncio import Redis

from worker.protocol import ChatJob, Event, Failed, Finished, decode_event
from worker.runtime import StepResult, WorkerRuntime


async def run_collecting(runtime: WorkerRuntime, redis: Redis, job: ChatJob) -> tuple[StepResult | None, list[Event]]:
    """Run `job` to its end, then stop the runtime; its result and its events up to the final one."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(job.channel)
    await pubsub.get_message(timeout=1.0)
    events: list[Event] = []
    try:
        result = await runtime.run(job)
        while not events or not isinstance(events[-1], Finished | Failed):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10.0)
            assert message is not None, events
            events.append(decode_event(message["data"]))
    finally:
        await pubsub.aclose()
        await runtime.stop()
    return result, events
