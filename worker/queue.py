"""Putting chat jobs on a model's arq queue with priorities, and taking them off again.

arq keeps a queue as a sorted set and starts the lowest scores first among those at or
below "now". We score a job at its enqueue time minus a lift of `ageing_s` per priority
level above the lowest, so a higher level always sorts first (FIFO within a level), and a
lower job that has waited longer than the lift between levels overtakes newer higher
ones: that is the ageing rule that keeps low priority from waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis

from worker.keys import Keys
from worker.protocol import ChatJob, arq_serialize, encode_job

CHAT_FUNCTION = "chat"


@dataclass(frozen=True, kw_only=True)
class QueuePolicy:
    strategy: str = "priority"
    ageing_s: float = 30.0
    levels: int = 3

    def score_ms(self, *, priority: int, now_ms: int) -> int:
        if self.strategy != "priority":
            return now_ms
        level = min(max(priority, 1), self.levels)
        return now_ms - int((level - 1) * self.ageing_s * 1000)


# Jobs ahead of one: those running now, and those queued before it. Running jobs stay in
# arq's sorted set until they end, at whatever score they had, so they are counted from the
# running hash rather than by rank. The one definition of a queue position, used by both
# scripts below.
_AHEAD = """
local function ahead_of(queue, running_hash, job_prefix, job_id)
  local rank = redis.call('ZRANK', queue, job_id)
  if not rank then
    return -1
  end
  local running = {}
  for _, key in ipairs(redis.call('HKEYS', running_hash)) do
    running[job_prefix .. key] = true
  end
  local ahead = 0
  for _, id in ipairs(redis.call('ZRANGE', queue, 0, rank)) do
    if id ~= job_id and not running[id] then
      ahead = ahead + 1
    end
  end
  for id, _ in pairs(running) do
    if id ~= job_id then
      ahead = ahead + 1
    end
  end
  return ahead
end
"""

# Admission control shared by every front (api/admission.py): purge slots past their deadline,
# then take one if fewer than `limit` are held. The one definition, used on its own and inside
# the enqueue script, so admitting and queueing a request is one round trip.
ADMIT = """
local function admit(admitted, now_ms, limit, expires_ms, request_id)
  redis.call('ZREMRANGEBYSCORE', admitted, '-inf', now_ms)
  if redis.call('ZCARD', admitted) >= tonumber(limit) then
    return false
  end
  redis.call('ZADD', admitted, expires_ms, request_id)
  return true
end
"""

# Queue a job the way arq's enqueue_job stores it (job key with an expiry, queue entry),
# wake the model's idle workers, and count the jobs ahead of it: one round trip instead
# of arq's four plus two. Refusing a job id already queued keeps arq's rule that a job id is
# queued at most once. With a ticket (ARGV[6..]) the request is admitted first, or not queued.
_ENQUEUE = (
    _AHEAD
    + ADMIT
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -2
end
if ARGV[6] ~= '' and not admit(KEYS[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]) then
  return -3
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('PUBLISH', KEYS[3], '1')
return ahead_of(KEYS[2], KEYS[4], ARGV[5], ARGV[4])
"""
)


@dataclass(frozen=True, kw_only=True)
class Ticket:
    """A request's claim on an admission slot: the sorted set, its limit, and the slot's expiry."""

    key: str
    limit: int
    request_id: str
    now_ms: int
    expires_ms: int


_POSITION = (
    _AHEAD
    + """
return ahead_of(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
"""
)


class JobQueue:
    """The models' queues on one Redis connection; its Lua scripts are registered once, here."""

    def __init__(self, redis: Redis, *, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._enqueue = redis.register_script(_ENQUEUE)
        self._position = redis.register_script(_POSITION)

    async def enqueue(
        self, job: ChatJob, *, policy: QueuePolicy, now_ms: int, expires_s: float, ticket: Ticket | None = None
    ) -> int | None:
        """Queue one job and wake the model's idle workers; returns the jobs ahead of it.

        With a ticket the request takes its admission slot in the same step: None (and nothing
        queued) when every slot is taken.
        """
        keys = self.keys
        score = policy.score_ms(priority=job.priority, now_ms=now_ms)
        job_id = keys.job_id(job.job_key)
        envelope = serialize_job(CHAT_FUNCTION, (encode_job(job),), {}, None, now_ms, serializer=arq_serialize)
        admit: list[str | int] = (
            ["", 0, 0, ""] if ticket is None else [ticket.now_ms, ticket.limit, ticket.expires_ms, ticket.request_id]
        )
        ahead = int(
            await self._enqueue(
                keys=[
                    job_key_prefix + job_id,
                    keys.queue(job.model),
                    keys.wake(job.model),
                    keys.running(job.model),
                    ticket.key if ticket is not None else keys.admitted,
                ],
                args=[envelope, int(max(expires_s, 1.0) * 1000), score, job_id, keys.job_id(""), *admit],
            )
        )
        if ahead == -2:
            raise RuntimeError(f"job {job.job_key} is already queued")
        if ahead == -3:
            return None
        return max(ahead, 0)

    async def position(self, *, model: str, request_id: str) -> int | None:
        """Jobs ahead of this one (see _AHEAD); None once it left the queue."""
        keys = self.keys
        ahead = int(
            await self._position(
                keys=[keys.queue(model), keys.running(model)], args=[keys.job_id(""), keys.job_id(request_id)]
            )
        )
        return None if ahead < 0 else ahead

    async def has_job(self, job_key: str) -> bool:
        """Whether the job is queued or running (arq keeps its job key until it ends)."""
        return bool(await self.redis.exists(job_key_prefix + self.keys.job_id(job_key)))

    async def is_cancelled(self, request_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.cancelled(request_id)))

    async def withdraw(self, *, model: str, request_id: str, marker_ttl_s: int) -> bool:
        """Cancel a request: drop its job if still queued and tell a worker running it to stop.

        Returns True when the job was still waiting in the queue.
        """
        keys = self.keys
        job_id = keys.job_id(request_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.queue(model), job_id)
            pipe.delete(job_key_prefix + job_id)
            pipe.set(keys.cancelled(request_id), b"1", ex=marker_ttl_s)
            pipe.publish(keys.cancel, request_id.encode())
            removed, *_ = await pipe.execute()
        return bool(removed)
