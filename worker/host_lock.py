"""A Redis lock per host: one supervisor at a time checks the host's budget and starts a worker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

_POLL_S = 0.05

# Delete the lock only if it is still ours: a holder that outlived its TTL must not free
# the lock another supervisor has taken since.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LockTimeout(TimeoutError):
    pass


@asynccontextmanager
async def host_lock(redis: Redis, key: str, *, ttl_s: float, wait_s: float) -> AsyncIterator[None]:
    """Hold `key` (SET NX PX) for the block; LockTimeout when it stays taken for `wait_s`."""
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while not await redis.set(key, token, nx=True, px=int(ttl_s * 1000)):
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{key} stayed locked for {wait_s:.0f}s")
        await asyncio.sleep(_POLL_S)
    try:
        yield
    finally:
        await redis.eval(_RELEASE, 1, key, token)  # type: ignore[misc]
