"""Jobs that do not decode: dropped, their client told when its channel can be read."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
import redis as sync_redis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from tests.conftest import StartFront, StartWorker
from worker.bad_jobs import INVALID_JOB, drop_undecodable, recover_channel
from worker.keys import Keys
from worker.protocol import Failed, arq_serialize, decode_event
from worker.queue import CHAT_FUNCTION

KEYS = Keys(prefix="p")


def test_the_channel_is_recovered_only_from_a_map_that_names_one_of_ours() -> None:
    def packed(value: object) -> bytes:
        return msgspec.msgpack.encode(value)

    assert recover_channel(packed({"channel": "p:ev:r1", "messages": 3}), keys=KEYS) == "p:ev:r1"
    assert recover_channel(packed({"channel": "other:ev:r1", "request_id": "r1"}), keys=KEYS) == "p:ev:r1"
    assert recover_channel(packed({"channel": "elsewhere"}), keys=KEYS) is None
    assert recover_channel(packed([1, 2, 3]), keys=KEYS) is None
    assert recover_channel(b"\xc1 not msgpack", keys=KEYS) is None
    assert recover_channel("not bytes", keys=KEYS) is None


@pytest.fixture
async def aredis() -> AsyncIterator[Redis]:
    from tests.support import TEST_REDIS_URL

    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


async def subscribed(client: Redis, channel: str) -> PubSub:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    # The subscription's confirmation: from here on nothing published is missed.
    await pubsub.get_message(timeout=1.0)
    return pubsub


async def next_event(pubsub: PubSub, *, limit_s: float = 30.0) -> Failed:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is not None:
            event = decode_event(message["data"])
            assert isinstance(event, Failed)
            return event
    raise AssertionError("no event arrived")


@pytest.mark.redis
async def test_the_client_of_an_undecodable_job_gets_an_error_event(aredis: Redis, prefix: str) -> None:
    keys = Keys(prefix=prefix)
    channel = keys.events("r1")
    pubsub = await subscribed(aredis, channel)
    try:
        payload = msgspec.msgpack.encode({"request_id": "r1", "channel": channel, "messages": "not a list"})
        told = await drop_undecodable(aredis, keys=keys, payload=payload, error=ValueError("bad"))
        assert told
        event = await next_event(pubsub)
    finally:
        await pubsub.aclose()
    assert event == INVALID_JOB and event.status == 502


@pytest.mark.redis
async def test_nothing_is_published_for_a_job_without_a_channel(aredis: Redis, prefix: str) -> None:
    told = await drop_undecodable(aredis, keys=Keys(prefix=prefix), payload=b"\x00\x01", error=ValueError("bad"))
    assert not told


def enqueue_raw(client: sync_redis.Redis, keys: Keys, *, model: str, request_id: str, payload: bytes) -> None:
    """Put a job on the model's queue the way the front does, with whatever payload."""
    now_ms = int(time.time() * 1000)
    job_id = keys.job_id(request_id)
    envelope = serialize_job(CHAT_FUNCTION, (payload,), {}, None, now_ms, serializer=arq_serialize)
    client.set(job_key_prefix + job_id, envelope, px=60_000)
    client.zadd(keys.queue(model), {job_id: now_ms})
    client.publish(keys.wake(model), b"1")


@pytest.mark.redis
async def test_a_worker_drops_undecodable_jobs_tells_their_client_and_serves_the_next(
    start_worker: StartWorker, start_front: StartFront, redis_client: sync_redis.Redis, aredis: Redis, prefix: str
) -> None:
    model = "smollm2-135m"
    keys = Keys(prefix=prefix)
    start_worker(model, INFERENCE_BACKEND="null")
    url = start_front()
    channel = keys.events("bad1")
    pubsub = await subscribed(aredis, channel)
    try:
        enqueue_raw(redis_client, keys, model=model, request_id="garbage", payload=b"\xc1 not msgpack")
        damaged = msgspec.msgpack.encode({"request_id": "bad1", "channel": channel, "params": 7})
        enqueue_raw(redis_client, keys, model=model, request_id="bad1", payload=damaged)
        event = await next_event(pubsub)
    finally:
        await pubsub.aclose()
    assert event.code == "invalid_job"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "still here"}], "max_tokens": 4},
        )
    assert answer.status_code == 200
    assert "still" in answer.json()["choices"][0]["message"]["content"]
