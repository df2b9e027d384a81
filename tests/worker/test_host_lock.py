"""The per-host lock on the real Redis: one holder at a time, and a late release frees nothing of another's."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from tests.support import TEST_REDIS_URL
from worker.host_lock import LockTimeout, host_lock


async def test_a_second_holder_waits_then_times_out(prefix: str) -> None:
    redis = Redis.from_url(TEST_REDIS_URL)
    key = f"{prefix}:fleetlock:h"
    try:
        async with host_lock(redis, key, ttl_s=5, wait_s=1):
            with pytest.raises(LockTimeout):
                async with host_lock(redis, key, ttl_s=5, wait_s=0.2):
                    pass
        # Released on leaving the block: the next holder gets it at once.
        async with host_lock(redis, key, ttl_s=5, wait_s=0.2):
            assert await redis.exists(key)
        assert not await redis.exists(key)
    finally:
        await redis.aclose()


async def test_a_holder_past_its_ttl_does_not_free_the_next_holders_lock(prefix: str) -> None:
    redis = Redis.from_url(TEST_REDIS_URL)
    key = f"{prefix}:fleetlock:h"
    try:
        async with host_lock(redis, key, ttl_s=0.2, wait_s=1):
            await asyncio.sleep(0.3)
            # The first hold expired; another supervisor takes the lock meanwhile.
            await redis.set(key, b"theirs", px=5000)
        assert await redis.get(key) == b"theirs"
    finally:
        await redis.aclose()
