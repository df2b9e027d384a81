"""Admission control shared by every front: at most N requests queued or running at once.

The count lives in Redis as a sorted set of request ids scored by each request's
deadline, so fronts share one limit, and a slot whose front crashed is reclaimed once
its deadline passes instead of leaking. A single model's request takes its slot in the
same script that queues its job (worker.queue.ADMIT is the one definition of both).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from api.errors import Overloaded, RequestTimeout
from worker.keys import Keys
from worker.queue import ADMIT, Ticket

_WAIT_POLL_S = 0.02
# A slot outlives its deadline by this much, so a request finishing right at its
# deadline releases its slot itself rather than having it reclaimed under it.
_GRACE_MS = 5_000

_ACQUIRE = ADMIT + "return admit(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) and 1 or 0\n"

# Takes the slot (and does whatever comes with it); False when every slot is taken.
Attempt = Callable[[Ticket], Awaitable[bool]]


class Admission:
    def __init__(self, redis: Redis, *, keys: Keys, limit: int, reject_when_full: bool) -> None:
        self._redis = redis
        self._key = keys.admitted
        self._limit = limit
        self._reject_when_full = reject_when_full
        self._acquire = redis.register_script(_ACQUIRE)

    def ticket(self, request_id: str, *, deadline_ms: int) -> Ticket:
        return Ticket(
            key=self._key,
            limit=self._limit,
            request_id=request_id,
            now_ms=int(time.time() * 1000),
            expires_ms=deadline_ms + _GRACE_MS,
        )

    async def _take(self, ticket: Ticket) -> bool:
        args: list[int | str] = [ticket.now_ms, ticket.limit, ticket.expires_ms, ticket.request_id]
        return bool(await self._acquire(keys=[ticket.key], args=args))

    async def acquire(
        self, request_id: str, *, deadline: float, deadline_ms: int, attempt: Attempt | None = None
    ) -> None:
        """Take a slot, or raise: 429 when full and rejecting, 504 when waiting ran out.

        `attempt` takes the slot together with other work (queueing the request's job);
        by default only the slot is taken.
        """
        attempt = attempt or self._take
        while not await attempt(self.ticket(request_id, deadline_ms=deadline_ms)):
            if self._reject_when_full:
                raise Overloaded(
                    f"The service is at its limit of {self._limit} concurrent requests; retry shortly.",
                    retry_after_s=1,
                )
            if time.monotonic() >= deadline:
                raise RequestTimeout("The request waited for a free slot until its timeout.")
            await asyncio.sleep(_WAIT_POLL_S)

    def release_in(self, pipe: Pipeline, request_id: str) -> None:
        """Free the slot as part of a pipeline the caller sends."""
        pipe.zrem(self._key, request_id)

    async def release(self, request_id: str) -> None:
        await self._redis.zrem(self._key, request_id)

    async def count(self) -> int:
        await self._redis.zremrangebyscore(self._key, "-inf", int(time.time() * 1000))
        return int(await self._redis.zcard(self._key))
