from __future__ import annotations

import time

import fakeredis
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from worker.keys import Keys
from worker.protocol import ChatJob, Message, SamplingParams, arq_deserialize, arq_serialize
from worker.queue import JobQueue, QueuePolicy, Ticket


def job(request_id: str, priority: int) -> ChatJob:
    return ChatJob(
        request_id=request_id,
        model="m",
        messages=[Message("user", "hi")],
        params=SamplingParams(),
        channel=f"x:ev:{request_id}",
        priority=priority,
        deadline_ms=int(time.time() * 1000) + 60_000,
    )


def test_higher_priority_sorts_first_and_fifo_within_a_level() -> None:
    policy = QueuePolicy(strategy="priority", ageing_s=30, levels=3)
    low_early = policy.score_ms(priority=1, now_ms=1_000)
    high_late = policy.score_ms(priority=3, now_ms=5_000)
    high_later = policy.score_ms(priority=3, now_ms=6_000)
    assert high_late < high_later < low_early


def test_ageing_lifts_a_low_job_that_waited_longer_than_the_gap() -> None:
    policy = QueuePolicy(strategy="priority", ageing_s=30, levels=3)
    low_old = policy.score_ms(priority=1, now_ms=0)
    normal_new = policy.score_ms(priority=2, now_ms=31_000)
    assert low_old < normal_new


def test_fifo_strategy_ignores_priority() -> None:
    policy = QueuePolicy(strategy="fifo")
    assert policy.score_ms(priority=3, now_ms=10) == 10


def test_priority_is_clamped_to_the_configured_levels() -> None:
    policy = QueuePolicy(strategy="priority", ageing_s=1, levels=3)
    assert policy.score_ms(priority=9, now_ms=10_000) == policy.score_ms(priority=3, now_ms=10_000)


@pytest.fixture
async def fake_pool() -> ArqRedis:
    fake = fakeredis.FakeAsyncRedis()
    return ArqRedis(fake.connection_pool, job_serializer=arq_serialize, job_deserializer=arq_deserialize)


async def test_enqueue_orders_queue_and_withdraw_removes(fake_pool: ArqRedis) -> None:
    keys = Keys(prefix="x")
    queue = JobQueue(fake_pool, keys=keys)
    policy = QueuePolicy()
    now = int(time.time() * 1000)
    for n, priority in enumerate([1, 2, 3, 2]):
        await queue.enqueue(job(f"r{n}", priority), policy=policy, now_ms=now + n, expires_s=60)
    order = [m.decode() for m in await fake_pool.zrange(keys.queue("m"), 0, -1)]
    assert order == ["x:r2", "x:r1", "x:r3", "x:r0"]
    assert await queue.position(model="m", request_id="r3") == 2
    assert await queue.has_job("r3") and not await queue.is_cancelled("r1")
    assert await queue.withdraw(model="m", request_id="r1", marker_ttl_s=5) is True
    assert await queue.position(model="m", request_id="r1") is None
    assert await queue.is_cancelled("r1")
    assert not await queue.has_job("r1")
    assert await queue.withdraw(model="m", request_id="r1", marker_ttl_s=5) is False


async def admit_and_queue_twice(client: Redis, keys: Keys) -> None:
    """With one slot: the first request is admitted and queued, the second neither."""
    pool = ArqRedis(client.connection_pool, job_serializer=arq_serialize, job_deserializer=arq_deserialize)
    queue = JobQueue(pool, keys=keys)
    now = int(time.time() * 1000)

    def ticket(request_id: str) -> Ticket:
        return Ticket(key=keys.admitted, limit=1, request_id=request_id, now_ms=now, expires_ms=now + 60_000)

    first = await queue.enqueue(job("a", 2), policy=QueuePolicy(), now_ms=now, expires_s=60, ticket=ticket("a"))
    second = await queue.enqueue(job("b", 2), policy=QueuePolicy(), now_ms=now, expires_s=60, ticket=ticket("b"))
    assert first == 0 and second is None
    assert [m.decode() for m in await pool.zrange(keys.admitted, 0, -1)] == ["a"]
    assert await queue.has_job("a") and not await queue.has_job("b")
    assert [m.decode() for m in await pool.zrange(keys.queue("m"), 0, -1)] == [keys.job_id("a")]
    # A slot past its expiry is taken back by the next ticket.
    late = Ticket(key=keys.admitted, limit=1, request_id="c", now_ms=now + 61_000, expires_ms=now + 120_000)
    assert await queue.enqueue(job("c", 2), policy=QueuePolicy(), now_ms=now, expires_s=60, ticket=late) == 1
    assert [m.decode() for m in await pool.zrange(keys.admitted, 0, -1)] == ["c"]


async def test_a_ticket_admits_and_queues_in_one_step_or_does_neither() -> None:
    await admit_and_queue_twice(fakeredis.FakeAsyncRedis(), Keys(prefix="x"))


@pytest.mark.redis
async def test_a_ticket_admits_and_queues_on_the_real_redis(redis: Redis, prefix: str) -> None:
    await admit_and_queue_twice(redis, Keys(prefix=prefix))
