"""Admission control shared by every front: at most N requests queued or running at once.

The count lives in Redis as a sorted set of request ids scored by each request's
deadline, so fronts share one limit, and a slot whose front crashed is reclaimed once
its deadline passes instead of leaking.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from api.errors import Overloaded, RequestTimeout
from worker.keys import Keys

_WAIT_POLL_S = 0.02
# A slot outlives its deadline by this much, so a request finishing right at its
# deadline releases its slot itself rather than having it reclaimed under it.
_GRACE_MS = 5_000


# Purge reclaimed slots, then admit if there is room: one atomic round trip.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
return 1
"""


class Admission:
    def __init__(self, redis: Redis, *, keys: Keys, limit: int, reject_when_full: bool) -> None:
        self._redis = redis
        self._key = keys.admitted
        self._limit = limit
        self._reject_when_full = reject_when_full
        self._acquire = redis.register_script(_ACQUIRE)

    async def _try_acquire(self, request_id: str, *, deadline_ms: int) -> bool:
        now_ms = int(time.time() * 1000)
        admitted = await self._acquire(
            keys=[self._key], args=[now_ms, self._limit, deadline_ms + _GRACE_MS, request_id]
        )
        return bool(admitted)

    async def acquire(self, request_id: str, *, deadline: float, deadline_ms: int) -> None:
        """Take a slot, or raise: 429 when full and rejecting, 504 when waiting ran out."""
        while not await self._try_acquire(request_id, deadline_ms=deadline_ms):
            if self._reject_when_full:
                raise Overloaded(
                    f"The service is at its limit of {self._limit} concurrent requests; retry shortly.",
                    retry_after_s=1,
                )
            if time.monotonic() >= deadline:
                raise RequestTimeout("The request waited for a free slot until its timeout.")
            await asyncio.sleep(_WAIT_POLL_S)

    async def release(self, request_id: str) -> None:
        await self._redis.zrem(self._key, request_id)

    async def count(self) -> int:
        await self._redis.zremrangebyscore(self._key, "-inf", int(time.time() * 1000))
        return int(await self._redis.zcard(self._key))
