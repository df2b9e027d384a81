"""The queue read claims arq's jobs in its script; arq 0.28's own Worker runs them, on the real Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from arq import Worker, func
from arq.constants import in_progress_key_prefix, retry_key_prefix
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import Connection

from tests.support import TEST_REDIS_URL
from worker.pool import WakeablePool

pytestmark = pytest.mark.redis


class SentCommands(Connection):
    """A connection that records the name of every command it sends (on its pool's list)."""

    sent: list[str]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.sent.extend(command_names(command if isinstance(command, bytes) else b"".join(command)))
        await super().send_packed_command(command, check_health)


def command_names(packed: bytes) -> list[str]:
    """The name of each command in RESP bytes: arrays of bulk strings, the first one the name."""
    names: list[str] = []
    at = 0
    while at < len(packed):
        end = packed.index(b"\r\n", at)
        count, at = int(packed[at + 1 : end]), end + 2
        for position in range(count):
            end = packed.index(b"\r\n", at)
            size, at = int(packed[at + 1 : end]), end + 2
            if position == 0:
                names.append(packed[at : at + size].decode().upper())
            at += size + 2
    return names


MakePool = Callable[..., Awaitable[tuple[WakeablePool, list[str]]]]
# The in-progress timeout arq gives run_queue's jobs: its default job timeout, 300 s, and 10 s.
ARQ_IN_PROGRESS_MS = 310_000


@pytest.fixture
async def make_pool(prefix: str) -> AsyncIterator[MakePool]:
    built: list[WakeablePool] = []

    async def make(*, in_progress_ms: int = ARQ_IN_PROGRESS_MS) -> tuple[WakeablePool, list[str]]:
        sent: list[str] = []
        connection_class = type("Recording", (SentCommands,), {"sent": sent})
        pool = WakeablePool(
            ConnectionPool.from_url(TEST_REDIS_URL, connection_class=connection_class),
            queue_name=f"{prefix}:q:m",
            wake_channel=f"{prefix}:wake:m",
            idle_wait_s=0.05,
            in_progress_ms=in_progress_ms,
            capacity=2,
        )
        await pool.start_wake_listener()
        built.append(pool)
        return pool, sent

    yield make
    for pool in built:
        await pool.stop_wake_listener()
        await pool.aclose()


async def record_try(ctx: dict[str, Any], n: int) -> None:
    ctx["ran"].append((n, ctx["job_try"]))


Job = Callable[..., Awaitable[None]]


async def run_queue(pool: WakeablePool, prefix: str, *, job: Job = record_try) -> list[tuple[int, int]]:
    """Run arq's Worker on the pool until the queue is empty: what each job run recorded, in order."""
    ran: list[tuple[int, int]] = []
    worker = Worker(
        functions=[func(job, name="record_try")],
        redis_pool=pool,
        queue_name=f"{prefix}:q:m",
        burst=True,
        poll_delay=0.01,
        max_jobs=3,
        keep_result=0,
        handle_signals=False,
        ctx={"ran": ran},
    )
    # Not worker.close(): that would close the pool the test goes on using.
    await worker.main()
    return sorted(ran)


async def arq_keys(pool: WakeablePool, prefix: str) -> list[bytes]:
    found: list[bytes] = []
    for key_prefix in (in_progress_key_prefix, retry_key_prefix):
        found += [key async for key in pool.scan_iter(match=f"{key_prefix}{prefix}:*")]
    return found


async def enqueue(pool: WakeablePool, prefix: str, count: int) -> None:
    for n in range(count):
        await pool.enqueue_job("record_try", n, _job_id=f"{prefix}:job{n}", _queue_name=f"{prefix}:q:m")


async def test_arq_runs_each_job_once_without_claiming_it_itself(make_pool: MakePool, prefix: str) -> None:
    pool, sent = await make_pool()
    await enqueue(pool, prefix, 5)
    sent.clear()
    assert await run_queue(pool, prefix) == [(n, 1) for n in range(5)]
    # arq's claim (WATCH, ZSCORE, PSETEX) and read (GET, INCRBY) of each job went into the script.
    assert not {"WATCH", "ZSCORE", "INCRBY", "GET", "PEXPIRE"} & set(sent)
    assert "EVALSHA" in sent
    assert await arq_keys(pool, prefix) == []
    assert await pool.zcard(f"{prefix}:q:m") == 0


async def test_a_claim_timed_unlike_arq_takes_arqs_timeout(make_pool: MakePool, prefix: str) -> None:
    pool, _ = await make_pool(in_progress_ms=5_000)

    async def in_progress_ttl_ms(ctx: dict[str, Any], n: int) -> None:
        ctx["ran"].append((n, await pool.pttl(f"{in_progress_key_prefix}{prefix}:job0")))

    await enqueue(pool, prefix, 1)
    [(_, ttl_ms)] = await run_queue(pool, prefix, job=in_progress_ttl_ms)
    assert ARQ_IN_PROGRESS_MS - 5_000 < ttl_ms <= ARQ_IN_PROGRESS_MS


async def test_a_job_that_ran_before_counts_its_try(make_pool: MakePool, prefix: str) -> None:
    pool, _ = await make_pool()
    await enqueue(pool, prefix, 1)
    # A worker that died while running it left its try count behind.
    await pool.set(f"{retry_key_prefix}{prefix}:job0", 1)
    assert await run_queue(pool, prefix) == [(0, 2)]


async def test_a_queued_job_whose_body_expired_is_dropped(make_pool: MakePool, prefix: str) -> None:
    pool, _ = await make_pool()
    await pool.zadd(f"{prefix}:q:m", {f"{prefix}:gone": 1})
    assert await run_queue(pool, prefix) == []
    assert await pool.zcard(f"{prefix}:q:m") == 0


async def read(pool: WakeablePool, prefix: str) -> list[bytes]:
    # arq rounds a job's score to the nearest millisecond: it may lie a little ahead of now.
    now_ms = time.time() * 1000 + 1
    found: list[bytes] = await pool.zrangebyscore(f"{prefix}:q:m", min=float("-inf"), max=now_ms, num=10)
    return found


async def test_claims_arq_did_not_start_go_back(make_pool: MakePool, prefix: str) -> None:
    pool, _ = await make_pool()
    await enqueue(pool, prefix, 2)
    ids = await read(pool, prefix)
    assert len(ids) == 2
    assert await pool.get(f"{retry_key_prefix}{prefix}:job0") == b"1"
    assert await pool.exists(f"{in_progress_key_prefix}{prefix}:job0") == 1
    # The next read gives the unstarted claims back before claiming again: one try, not two.
    assert await read(pool, prefix) == ids
    assert await pool.get(f"{retry_key_prefix}{prefix}:job0") == b"1"
    await pool.give_back_claims()
    assert await arq_keys(pool, prefix) == []
    assert await pool.zcard(f"{prefix}:q:m") == 2


async def test_a_command_the_pipeline_does_not_answer_lets_the_claim_go(make_pool: MakePool, prefix: str) -> None:
    pool, sent = await make_pool()
    await enqueue(pool, prefix, 1)
    await pool.set(f"{prefix}:other", b"x")
    await read(pool, prefix)
    in_progress = f"{in_progress_key_prefix}{prefix}:job0"
    async with pool.pipeline(transaction=True) as pipe:
        await pipe.watch(in_progress)
        assert await pipe.exists(in_progress) == 0
        sent.clear()
        assert await pipe.get(f"{prefix}:other") == b"x"
        # Given back and watched for real: Redis now says what arq's own claim would have seen.
        assert sent[0] == "EVALSHA"
        assert sent[-2:] == ["WATCH", "GET"]
        assert await pipe.exists(in_progress) == 0
        pipe.multi()
        pipe.psetex(in_progress, 60_000, b"1")
        assert await pipe.execute() == [True]
    assert await pool.exists(in_progress) == 1
    assert await pool.get(f"{retry_key_prefix}{prefix}:job0") is None


async def test_a_read_the_pipeline_does_not_answer_counts_one_try(make_pool: MakePool, prefix: str) -> None:
    pool, _ = await make_pool()
    await enqueue(pool, prefix, 1)
    [job_id] = [raw.decode() for raw in await read(pool, prefix)]
    in_progress = f"{in_progress_key_prefix}{job_id}"
    # arq's claim, answered from the read's script.
    async with pool.pipeline(transaction=True) as pipe:
        await pipe.watch(in_progress)
        assert await pipe.exists(in_progress) == 0
        pipe.multi()
        pipe.psetex(in_progress, ARQ_IN_PROGRESS_MS, b"1")
        assert await pipe.execute() == [True]
    # A read unlike arq 0.28's (with the abort set, as allow_abort_jobs has it) goes to Redis.
    async with pool.pipeline(transaction=True) as pipe:
        pipe.get(f"arq:job:{job_id}")
        pipe.incr(f"{retry_key_prefix}{job_id}")
        pipe.expire(f"{retry_key_prefix}{job_id}", 88400)
        pipe.zrem("arq:abort", job_id)
        payload, tries, _, _ = await pipe.execute()
    assert payload is not None
    assert tries == 1
