"""The fleet as the front reads it from the real Redis: bad worker records, context limits."""

from __future__ import annotations

import logging
import time

import pytest
from redis.asyncio import Redis

from presets.settings import Settings
from tests.support import TEST_REDIS_URL, in_process_front
from worker.keys import Keys
from worker.presence import Presence

MODEL = "smollm2-135m"
pytestmark = pytest.mark.redis


async def register(redis: Redis, keys: Keys, *, context_length: int) -> Presence:
    """A worker entry as a ready worker writes it (no process behind it: nothing is queued here)."""
    presence = Presence(redis, keys=keys, model=MODEL, worker_id="good", ttl_s=60)
    await presence.update(state="ready", backend="null", context_length=context_length)
    return presence


async def plant(redis: Redis, keys: Keys, worker_id: str, fields: dict[str, bytes]) -> None:
    await redis.hset(keys.worker(MODEL, worker_id), mapping=fields)  # type: ignore[arg-type]
    await redis.zadd(keys.workers, {f"{MODEL}/{worker_id}": int(time.time() * 1000) + 60_000})


def settings(prefix: str) -> Settings:
    return Settings(redis_url=TEST_REDIS_URL, key_prefix=prefix, api_key=[])


async def test_worker_records_that_do_not_decode_are_skipped_and_logged(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = Keys(prefix=prefix)
    await register(redis, keys, context_length=2048)
    await plant(redis, keys, "no-model", {"worker_id": b"no-model", "state": b"ready"})
    await plant(redis, keys, "bad-pid", {"model": MODEL.encode(), "worker_id": b"bad-pid", "pid": b"12x"})
    await plant(redis, keys, "not-utf8", {"model": MODEL.encode(), "worker_id": b"not-utf8", "state": b"\xff\xfe"})
    with caplog.at_level(logging.WARNING, logger="worker.presence"):
        async with in_process_front(settings(prefix)) as client:
            models = await client.get("/v1/models")
            queue = await client.get("/v1/queue")
            ready = await client.get("/health/ready")
    assert models.status_code == 200
    card = next(c for c in models.json()["data"] if c["id"] == MODEL)
    assert card["status"] == "loaded" and card["workers"] == 1
    assert queue.status_code == 200
    assert ready.status_code in (200, 503) and "status" in ready.json()
    skipped = [r.getMessage() for r in caplog.records if r.name == "worker.presence"]
    assert skipped and all("does not decode" in m for m in skipped)
    assert any("no-model" in m for m in skipped) and any("12x" in m for m in skipped)


async def test_max_tokens_over_the_served_context_is_a_400_naming_the_limit(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix=prefix)
    await register(redis, keys, context_length=2048)
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2049}
    async with in_process_front(settings(prefix)) as client:
        answer = await client.post("/v1/chat/completions", json=request)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    assert "2048" in error["message"] and "2049" in error["message"]
    # Refused before queueing: nothing waits on the model's queue.
    assert await redis.zcard(keys.queue(MODEL)) == 0
