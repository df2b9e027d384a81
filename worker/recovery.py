"""Jobs whose worker died: run them again elsewhere, or end them with a clear error.

A worker that dies (SIGKILL, OOM, a crash in the model) leaves its entries in the model's
running hash, and arq's in-progress lock on its jobs outlives their deadline, so arq alone
would neither re-run them nor let anyone know. Anyone may reap: workers of the model on
their heartbeat, and fronts when a request they follow goes quiet. The script is atomic,
so two reapers never handle one job twice.

A job goes back to its queue unless its client already saw part of its answer (a streamed
job that sent a token); that one ends with an error event instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from worker.keys import Keys
from worker.protocol import Failed, encode_event

logger = logging.getLogger(__name__)

_DONE_TTL_S = 120

_REAP = """
local found = {}
local entries = redis.call('HGETALL', KEYS[1])
for index = 1, #entries, 2 do
  local job_key, worker = entries[index], entries[index + 1]
  if redis.call('EXISTS', ARGV[1] .. worker) == 0 then
    redis.call('HDEL', KEYS[1], job_key)
    local job_id = ARGV[2] .. job_key
    redis.call('DEL', ARGV[4] .. job_id)
    local queued = redis.call('ZSCORE', KEYS[2], job_id)
    if redis.call('EXISTS', ARGV[3] .. job_key) == 1 or not queued
        or redis.call('EXISTS', ARGV[5] .. job_id) == 0 then
      redis.call('ZREM', KEYS[2], job_id)
      redis.call('DEL', ARGV[5] .. job_id, ARGV[3] .. job_key)
      table.insert(found, {job_key, 'failed'})
    else
      redis.call('PUBLISH', KEYS[3], '1')
      table.insert(found, {job_key, 'requeued'})
    end
  end
end
return found
"""


@dataclass(frozen=True, kw_only=True)
class Reaped:
    job_key: str
    requeued: bool


class Reaper:
    """Holds the registered script; one per process."""

    def __init__(self, redis: Redis, *, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = redis.register_script(_REAP)

    async def reap(self, model: str) -> list[Reaped]:
        keys = self._keys
        found = await self._script(
            keys=[keys.running(model), keys.queue(model), keys.wake(model)],
            args=[keys.worker(model, ""), keys.job_id(""), keys.sent(""), in_progress_key_prefix, job_key_prefix],
        )
        reaped = [Reaped(job_key=job_key.decode(), requeued=outcome == b"requeued") for job_key, outcome in found]
        for job in reaped:
            if job.requeued:
                logger.warning("the worker running %s on %s died; the job is queued again", job.job_key, model)
            else:
                logger.warning("the worker running %s on %s died mid-stream; the request ends", job.job_key, model)
                await self._fail(job.job_key)
        return reaped

    async def _fail(self, job_key: str) -> None:
        request_id = job_key.split("/", 1)[0]
        event = encode_event(
            Failed(
                code="worker_died",
                message="The worker generating this answer stopped unexpectedly; part of the answer was already sent.",
                status=502,
            )
        )
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.done(request_id), event, ex=_DONE_TTL_S)
            pipe.publish(self._keys.events(request_id), event)
            await pipe.execute()


def done_ttl_s(*, request_timeout_s: float) -> int:
    """How long a final event stays readable: past any front's deadline for the request."""
    return max(int(request_timeout_s) + 60, _DONE_TTL_S)
