"""The worker's queue read, on the real Redis: only claimable jobs, no more than the free slots."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from arq.constants import in_progress_key_prefix
from redis.asyncio import ConnectionPool

from tests.support import TEST_REDIS_URL
from worker.pool import WakeablePool

pytestmark = pytest.mark.redis
MakePool = Callable[..., Awaitable[WakeablePool]]


class Worker:
    """Stands in for arq's Worker: the pool counts tasks running a `Worker.run_job` coroutine."""

    async def run_job(self, release: asyncio.Event) -> None:
        await release.wait()


@pytest.fixture
async def make_pool(prefix: str) -> AsyncIterator[MakePool]:
    built: list[WakeablePool] = []

    async def make(*, capacity: int | None, idle_wait_s: float = 0.3) -> WakeablePool:
        pool = WakeablePool(
            ConnectionPool.from_url(TEST_REDIS_URL),
            queue_name=f"{prefix}:q:m",
            wake_channel=f"{prefix}:wake:m",
            idle_wait_s=idle_wait_s,
            in_progress_ms=60_000,
            capacity=capacity,
        )
        await pool.start_wake_listener()
        built.append(pool)
        return pool

    yield make
    for pool in built:
        await pool.stop_wake_listener()
        async for key in pool.scan_iter(match=f"{in_progress_key_prefix}{prefix}:*"):
            await pool.delete(key)
        await pool.aclose()


async def queue(pool: WakeablePool, prefix: str, count: int) -> list[bytes]:
    ids = [f"{prefix}:job{n}".encode() for n in range(count)]
    await pool.zadd(f"{prefix}:q:m", {job: n for n, job in enumerate(ids)})
    return ids


async def read(pool: WakeablePool, prefix: str) -> list[bytes]:
    found: list[bytes] = await pool.zrangebyscore(f"{prefix}:q:m", min=float("-inf"), max=time.time() * 1000, num=100)
    return found


async def test_the_read_skips_jobs_another_worker_runs(make_pool: MakePool, prefix: str) -> None:
    pool = await make_pool(capacity=None)
    ids = await queue(pool, prefix, 4)
    await pool.set(in_progress_key_prefix + ids[0].decode(), b"1")
    await pool.set(in_progress_key_prefix + ids[2].decode(), b"1")
    assert await read(pool, prefix) == [ids[1], ids[3]]


async def test_the_read_returns_no_more_jobs_than_free_slots(make_pool: MakePool, prefix: str) -> None:
    pool = await make_pool(capacity=3)
    ids = await queue(pool, prefix, 5)
    release = asyncio.Event()
    running = asyncio.create_task(Worker().run_job(release))
    await asyncio.sleep(0)
    assert await read(pool, prefix) == ids[:2]
    release.set()
    await running


async def test_an_idle_worker_beside_busy_ones_waits_for_a_wake(make_pool: MakePool, prefix: str) -> None:
    pool = await make_pool(capacity=1, idle_wait_s=5.0)
    ids = await queue(pool, prefix, 1)
    await pool.set(in_progress_key_prefix + ids[0].decode(), b"1")
    reading = asyncio.create_task(read(pool, prefix))
    await asyncio.sleep(0.2)
    # Only a running job is queued: the read waits rather than handing it to arq to fail to claim.
    assert not reading.done()
    fresh = f"{prefix}:fresh".encode()
    await pool.zadd(f"{prefix}:q:m", {fresh: 10})
    await pool.publish(f"{prefix}:wake:m", b"")
    assert await asyncio.wait_for(reading, 2.0) == [fresh]


async def test_a_full_worker_reads_once_a_job_ends(make_pool: MakePool, prefix: str) -> None:
    pool = await make_pool(capacity=1, idle_wait_s=5.0)
    ids = await queue(pool, prefix, 2)
    release = asyncio.Event()
    running = asyncio.create_task(Worker().run_job(release))
    await asyncio.sleep(0)
    reading = asyncio.create_task(read(pool, prefix))
    await asyncio.sleep(0.2)
    assert not reading.done()
    release.set()
    await running
    assert await asyncio.wait_for(reading, 2.0) == ids[:1]


async def test_a_stopping_worker_takes_no_job_when_a_slot_frees(make_pool: MakePool, prefix: str) -> None:
    pool = await make_pool(capacity=1, idle_wait_s=5.0)
    await queue(pool, prefix, 2)
    release = asyncio.Event()
    running = asyncio.create_task(Worker().run_job(release))
    await asyncio.sleep(0)
    reading = asyncio.create_task(read(pool, prefix))
    await asyncio.sleep(0.1)
    pool.stopping = lambda: True
    release.set()
    await running
    assert await asyncio.wait_for(reading, 2.0) == []
