"""A Redis lock per host: one supervisor at a time checks the host's budget and starts a worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import LockNotOwnedError

_POLL_S = 0.05


class LockTimeout(TimeoutError):
    pass


@asynccontextmanager
async def host_lock(redis: Redis, key: str, *, ttl_s: float, wait_s: float) -> AsyncIterator[None]:
    """Hold `key` for the block (redis-py's token lock); LockTimeout when it stays taken for `wait_s`."""
    lock = redis.lock(key, timeout=ttl_s, sleep=_POLL_S, blocking_timeout=wait_s)
    if not await lock.acquire():
        raise LockTimeout(f"{key} stayed locked for {wait_s:.0f}s")
    try:
        yield
    finally:
        # A holder that outlived its TTL must not free the lock another supervisor has taken since.
        with contextlib.suppress(LockNotOwnedError):
            await lock.release()
