"""Worker-side metrics: buckets, the heartbeat that carries them, and counts kept when Redis fails."""

from __future__ import annotations

import fakeredis
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from api.metrics import cumulative, parse_totals
from worker.keys import Keys
from worker.metrics import TPOT, TTFT, WorkerMetrics
from worker.presence import Presence

KEYS = Keys(prefix="m")


def test_an_observation_lands_in_the_first_bucket_that_holds_it() -> None:
    assert TTFT.bucket_label(0.005) == "0.005"
    assert TTFT.bucket_label(0.0051) == "0.01"
    assert TTFT.bucket_label(0.0) == "0.005"
    assert TTFT.bucket_label(1e6) == "+Inf"


async def test_the_heartbeat_adds_a_jobs_counts_and_the_scrape_reads_them_back() -> None:
    redis = fakeredis.FakeAsyncRedis()
    metrics = WorkerMetrics(KEYS.metrics, model="m1")
    presence = Presence(redis, keys=KEYS, model="m1", worker_id="w", ttl_s=5, also_write=metrics.write)
    # Started at 10.0 s, first token at 10.2 s, 5 tokens ending at 11.0 s: TPOT is 0.8 / 4.
    metrics.job_done(prompt_tokens=7, completion_tokens=5, started_s=10.0, first_token_s=10.2, end_s=11.0)
    metrics.job_done(prompt_tokens=3, completion_tokens=1, started_s=0.0, first_token_s=0.03, end_s=0.03)
    # A job with no token (cancelled while reading its prompt) counts its prompt only.
    metrics.job_done(prompt_tokens=2, completion_tokens=0, started_s=0.0, first_token_s=None, end_s=1.0)
    await presence.update(state="ready")
    await presence.update(state="ready")  # nothing new: nothing added twice

    totals = parse_totals(await redis.hgetall(KEYS.metrics))
    assert totals.counters["prompt_tokens_total"] == {("m1",): 12}
    assert totals.counters["generation_tokens_total"] == {("m1",): 6}
    ttft = totals.buckets[TTFT.name][("m1",)]
    assert ttft == {"0.25": 1, "0.05": 1}
    assert totals.sums_s[TTFT.name][("m1",)] == pytest.approx(0.23)
    # A one-token answer has no time per output token.
    assert totals.buckets[TPOT.name][("m1",)] == {"0.25": 1}
    assert totals.sums_s[TPOT.name][("m1",)] == pytest.approx(0.2)
    buckets = dict(cumulative(TTFT, ttft))
    assert buckets["0.025"] == 0 and buckets["0.05"] == 1 and buckets["0.25"] == 2 and buckets["+Inf"] == 2


class _BrokenPipeline:
    def __init__(self) -> None:
        self.commands: list[tuple[str, str, int]] = []

    def hincrby(self, key: str, field: str, amount: int) -> None:
        self.commands.append((key, field, amount))


async def test_counts_survive_a_flush_that_failed() -> None:
    metrics = WorkerMetrics(KEYS.metrics, model="m1")
    metrics.job_done(prompt_tokens=4, completion_tokens=2, started_s=0.0, first_token_s=0.1, end_s=0.2)
    failed = _BrokenPipeline()
    restore = metrics.write(failed)
    assert ("m:metrics", "generation_tokens_total|m1", 2) in failed.commands
    restore()
    metrics.job_done(prompt_tokens=1, completion_tokens=1, started_s=0.0, first_token_s=0.1, end_s=0.1)
    retried = _BrokenPipeline()
    metrics.write(retried)
    sent = {field: amount for _, field, amount in retried.commands}
    assert sent["generation_tokens_total|m1"] == 3
    assert sent["prompt_tokens_total|m1"] == 5


async def test_a_heartbeat_that_fails_keeps_the_counts_for_the_next() -> None:
    server = fakeredis.FakeServer()
    redis = fakeredis.FakeAsyncRedis(server=server)
    metrics = WorkerMetrics(KEYS.metrics, model="m1")
    presence = Presence(redis, keys=KEYS, model="m1", worker_id="w", ttl_s=5, also_write=metrics.write)
    metrics.job_done(prompt_tokens=4, completion_tokens=2, started_s=0.0, first_token_s=0.1, end_s=0.2)
    server.connected = False  # every command now fails as if Redis were away
    with pytest.raises(RedisConnectionError):
        await presence.update(state="ready")
    server.connected = True
    await presence.update(state="ready")
    assert await redis.hget(KEYS.metrics, "generation_tokens_total|m1") == b"2"
