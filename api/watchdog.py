"""What a front does when a request it follows goes quiet: look at its job in Redis.

Events travel over pub/sub, which drops what is published while a subscriber reconnects.
After a silence the front asks Redis where the job stands: finished (its final event is
kept under `done`), still queued, running on a live worker, or running on a dead one (then
the job is reaped: queued again, or ended with an error). A job that is none of these is
lost, and the request ends with a clear error rather than waiting for its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.connections import ArqRedis

from api.errors import EventsLost, error_for
from orchestration.start import read_dag
from orchestration.store import DagStore
from worker.keys import Keys
from worker.protocol import Event, Finished, Token, decode_event
from worker.recovery import Reaper

# Observations of "nowhere" in a row before a job counts as lost: one could fall between a
# worker's last command and the queue's cleanup.
_LOST_AFTER = 2


@dataclass(kw_only=True)
class Followed:
    """What the watchdog needs to know of a request a front follows."""

    request_id: str
    model: str
    dag: bool
    tokens_seen: int = 0
    nowhere: int = 0


class Watchdog:
    def __init__(self, redis: ArqRedis, *, keys: Keys, reaper: Reaper) -> None:
        self._redis = redis
        self._keys = keys
        self._reaper = reaper

    async def check(self, job: Followed) -> list[Event]:
        """Events recovered from Redis (often none); raises when the request cannot go on."""
        keys = self._keys
        if job.dag:
            return await self._check_dag(job)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.done(job.request_id))
            pipe.hget(keys.running(job.model), job.request_id)
            pipe.zscore(keys.queue(job.model), keys.job_id(job.request_id))
            done, worker, score = await pipe.execute()
        if done is not None:
            return [decode_event(done)]
        if worker is not None:
            if not await self._redis.exists(keys.worker(job.model, worker.decode())):
                await self._reaper.reap(job.model)
            return self._alive(job)
        if score is not None:
            return self._alive(job)
        return self._nowhere(job, "The request's job disappeared from the queue before it finished.")

    def _alive(self, job: Followed) -> list[Event]:
        job.nowhere = 0
        return []

    def _nowhere(self, job: Followed, message: str) -> list[Event]:
        job.nowhere += 1
        if job.nowhere >= _LOST_AFTER:
            raise EventsLost(message)
        return []

    async def _check_dag(self, job: Followed) -> list[Event]:
        done = await self._redis.get(self._keys.done(job.request_id))
        if done is not None:
            return [decode_event(done)]
        view = await read_dag(self._redis, keys=self._keys, dag_id=job.request_id)
        if view is None:
            return self._nowhere(job, "The request's orchestration expired before it finished.")
        if view.status == "running":
            steps = await DagStore(self._redis, keys=self._keys, dag_id=job.request_id, ttl_s=1).jobs()
            for model in sorted(set(steps.values())):
                await self._reaper.reap(model)
            return self._alive(job)
        if view.status == "done" and view.final is not None:
            if job.tokens_seen:
                raise EventsLost("Part of the answer was lost on its way to this server.")
            # The answer's events were missed entirely: the DAG keeps the answer itself.
            events: list[Event] = []
            if view.summary is not None:
                events.append(view.summary)
            events.append(Token(view.final.text))
            events.append(
                Finished(
                    reason="length" if view.final.reason == "length" else "stop",
                    model=view.final.model,
                    prompt_tokens=0,
                    completion_tokens=0,
                )
            )
            return events
        raise error_for(code="orchestration_failed", message=view.error or "The orchestration ended.", status=502)
