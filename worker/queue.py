"""Putting chat jobs on a model's arq queue with priorities, and taking them off again.

arq keeps a queue as a sorted set and starts the lowest scores first among those at or
below "now". We score a job at its enqueue time minus a lift of `ageing_s` per priority
level above the lowest, so a higher level always sorts first (FIFO within a level), and a
lower job that has waited longer than the lift between levels overtakes newer higher
ones: that is the ageing rule that keeps low priority from waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from worker.keys import Keys
from worker.protocol import ChatJob, encode_job

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


async def enqueue_chat(
    redis: ArqRedis, *, keys: Keys, job: ChatJob, policy: QueuePolicy, now_ms: int, expires_s: float
) -> None:
    """Queue one job and wake the model's idle workers."""
    score = policy.score_ms(priority=job.priority, now_ms=now_ms)
    queued = await redis.enqueue_job(
        CHAT_FUNCTION,
        encode_job(job),
        _job_id=keys.job_id(job.job_key),
        _queue_name=keys.queue(job.model),
        _defer_until=datetime.fromtimestamp(score / 1000, tz=UTC),
        _expires=max(expires_s, 1.0),
    )
    if queued is None:
        raise RuntimeError(f"job {job.job_key} is already queued")
    await redis.publish(keys.wake(job.model), b"1")


async def queue_position(redis: ArqRedis, *, keys: Keys, model: str, request_id: str) -> int | None:
    """Jobs ahead of this one: those running now, and those queued before it; None once gone.

    Running jobs stay in arq's sorted set until they end, at whatever score they had, so
    they are counted from the running hash rather than by rank.
    """
    job_id = keys.job_id(request_id)
    rank = await redis.zrank(keys.queue(model), job_id)
    if rank is None:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.queue(model), 0, rank)
        pipe.hkeys(keys.running(model))
        before, running_keys = await pipe.execute()
    running = {keys.job_id(key.decode()) for key in running_keys}
    waiting_ahead = [m for m in before if m.decode() not in running and m.decode() != job_id]
    return len(waiting_ahead) + len(running - {job_id})


async def withdraw(redis: ArqRedis, *, keys: Keys, model: str, request_id: str, marker_ttl_s: int) -> bool:
    """Cancel a request: drop its job if still queued and tell a worker running it to stop.

    Returns True when the job was still waiting in the queue.
    """
    job_id = keys.job_id(request_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.queue(model), job_id)
        pipe.delete(job_key_prefix + job_id)
        pipe.set(keys.cancelled(request_id), b"1", ex=marker_ttl_s)
        pipe.publish(keys.cancel, request_id.encode())
        removed, *_ = await pipe.execute()
    return bool(removed)
