"""Admission, per-model concurrency, deadlines, cancellation, visibility and auto-routing.

Workers run the null backend with a per-token delay: a slow model whose timing is known.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from tests.conftest import StartFront, StartWorker

pytestmark = pytest.mark.redis
SMOL, GEMMA = "smollm2-135m", "gemma3-270m"
SLOW = {"INFERENCE_BACKEND": "null", "INFERENCE_NULL_TOKEN_DELAY_MS": "50"}


def chat(url: str, content: str = "hello", *, model: str = SMOL, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def wait_for(check: object, *, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    assert callable(check)
    while not check():
        assert time.monotonic() - started < timeout_s, what
        time.sleep(0.01)
    return time.monotonic() - started


def jobs_done(redis_client: redis.Redis, prefix: str, model: str) -> dict[str, int]:
    done = {}
    for key in redis_client.scan_iter(match=f"{prefix}:worker:{model}:*"):
        done[key.decode()] = int(redis_client.hget(key, "jobs_done") or 0)
    return done


def test_ageing_lets_a_long_waiting_low_job_overtake_a_new_high_one(
    start_worker: StartWorker, start_front: StartFront
) -> None:
    start_worker(SMOL, **SLOW)
    url = start_front(INFERENCE_PRIORITY_AGEING_S="0.5")
    finished: list[str] = []
    lock = threading.Lock()

    def run(name: str, priority: int, tokens: int) -> None:
        assert chat(url, name, max_tokens=tokens, priority=priority).status_code == 200
        with lock:
            finished.append(name)

    with ThreadPoolExecutor(max_workers=3) as pool:
        blocker = pool.submit(run, "blocker", 2, 50)  # 2.5 s
        time.sleep(0.3)
        low = pool.submit(run, "low", 1, 1)
        time.sleep(1.3)  # the low job has waited longer than the 1 s lift between levels 1 and 3
        high = pool.submit(run, "high", 3, 1)
        for future in (blocker, low, high):
            future.result()
    assert finished == ["blocker", "low", "high"]


def test_past_the_cap_requests_get_429_while_admitted_ones_complete(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, **SLOW)
    url = start_front(INFERENCE_MAX_CONCURRENT_REQUESTS="2")
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(chat, url, f"r{n}", max_tokens=10) for n in range(5)]
        responses = [f.result() for f in futures]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"] == "rate_limit_exceeded"
        else:
            assert response.json()["usage"]["completion_tokens"] == 10
    assert redis_client.zcard(f"{prefix}:admitted") == 0


def test_when_rejection_is_off_requests_wait_for_a_slot(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(SMOL, **SLOW)
    url = start_front(INFERENCE_MAX_CONCURRENT_REQUESTS="1", INFERENCE_REJECT_WHEN_FULL="false")
    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(lambda n: chat(url, f"r{n}", max_tokens=4), range(4)))
    assert [r.status_code for r in responses] == [200] * 4


def test_admission_slots_of_a_dead_front_are_reclaimed_after_their_deadline(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, **SLOW)
    env = {"INFERENCE_MAX_CONCURRENT_REQUESTS": "1", "INFERENCE_REQUEST_TIMEOUT": "2"}
    first = start_front(**env)

    def doomed() -> None:
        # Its front is killed mid-request: the connection error is the point.
        with contextlib.suppress(httpx.HTTPError):
            chat(first, "long", max_tokens=200)

    threading.Thread(target=doomed, daemon=True).start()
    wait_for(lambda: redis_client.zcard(f"{prefix}:admitted") == 1, timeout_s=5, what="never admitted")
    first.proc.process.kill()
    second = start_front(**env)
    assert chat(second, "x", max_tokens=1).status_code == 429
    # deadline (2 s) + grace (5 s): the slot comes back without the dead front
    wait_for(lambda: chat(second, "x", max_tokens=1).status_code == 200, timeout_s=15, what="slot leaked")


def test_a_worker_runs_at_most_its_per_model_concurrency(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, INFERENCE_MAX_CONCURRENT_PER_MODEL="2", **SLOW)
    url = start_front()
    peak = 0
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(chat, url, f"r{n}", max_tokens=20) for n in range(4)]
        while not all(f.done() for f in futures):
            peak = max(peak, redis_client.hlen(f"{prefix}:running:{SMOL}"))
            time.sleep(0.01)
    assert [f.result().status_code for f in futures] == [200] * 4
    assert peak == 2


def test_a_job_still_queued_at_its_deadline_is_removed_and_never_runs(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, **SLOW)
    patient = start_front()
    hasty = start_front(INFERENCE_REQUEST_TIMEOUT="1")
    with ThreadPoolExecutor(max_workers=1) as pool:
        blocker = pool.submit(chat, patient, "blocker", max_tokens=60)  # 3 s
        time.sleep(0.3)
        expired = chat(hasty, "too late", max_tokens=1)
        assert expired.status_code == 504
        assert redis_client.zcard(f"{prefix}:q:{SMOL}") == 1  # only the blocker is left
        assert blocker.result().status_code == 200
    # Workers report their counts with the next heartbeat (every TTL/3).
    wait_for(lambda: sum(jobs_done(redis_client, prefix, SMOL).values()) >= 1, timeout_s=10, what="counts")
    time.sleep(2.0)
    assert sum(jobs_done(redis_client, prefix, SMOL).values()) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_disconnect_frees_the_worker_within_a_second(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str, stream: bool
) -> None:
    start_worker(SMOL, **SLOW)
    url = start_front()
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": SMOL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000, "stream": stream}
    ).encode()
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    running = f"{prefix}:running:{SMOL}"
    wait_for(lambda: redis_client.hlen(running) == 1, timeout_s=5, what="never started")
    sock.close()
    freed_in_s = wait_for(lambda: redis_client.hlen(running) == 0, timeout_s=5, what="worker not freed")
    assert freed_in_s < 1.0
    started = time.monotonic()
    assert chat(url, "next", max_tokens=2).status_code == 200
    assert time.monotonic() - started < 1.0


def test_queue_position_is_streamed_and_the_queue_endpoint_shows_it(
    start_worker: StartWorker, start_front: StartFront
) -> None:
    start_worker(SMOL, **SLOW)
    url = start_front()
    with ThreadPoolExecutor(max_workers=2) as pool:
        blocker = pool.submit(chat, url, "blocker", max_tokens=60)
        time.sleep(0.3)
        body = {
            "model": SMOL,
            "messages": [{"role": "user", "content": "waiting"}],
            "max_tokens": 1,
            "stream": True,
            "priority": 3,
        }
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            snapshot = httpx.get(f"{url}/v1/queue").json()
            rest = [line for line in lines if line]
        blocker.result()
    assert first == ": queue position 1"
    model = snapshot["models"][SMOL]
    assert model["queued"] == {"1": 0, "2": 0, "3": 1}
    assert model["running"] == 1 and len(model["workers"]) == 1
    assert snapshot["admitted"] == 2
    assert rest[-1] == "data: [DONE]" and any('"content":"waiting"' in line for line in rest)


@pytest.mark.parametrize("strategy", ["round_robin", "least_busy"])
def test_two_workers_of_one_model_share_the_load(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str, strategy: str
) -> None:
    start_worker(SMOL, INFERENCE_WORKER_ID="w1", **SLOW)
    start_worker(SMOL, INFERENCE_WORKER_ID="w2", **SLOW)
    url = start_front(INFERENCE_AUTO_ROUTE_ENABLED="true", INFERENCE_AUTO_ROUTE_STRATEGY=strategy)
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda n: chat(url, f"r{n}", max_tokens=6), range(8)))
    assert all(r.status_code == 200 for r in responses)
    # Workers report their counts with the next heartbeat.
    wait_for(lambda: sum(jobs_done(redis_client, prefix, SMOL).values()) == 8, timeout_s=10, what="counts")
    done = jobs_done(redis_client, prefix, SMOL)
    assert sorted(done.values()) == [4, 4] or (len(done) == 2 and min(done.values()) >= 2), done


def test_round_robin_across_models_that_share_a_role(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(SMOL, INFERENCE_BACKEND="null")
    start_worker(GEMMA, INFERENCE_BACKEND="null")
    url = start_front(INFERENCE_AUTO_ROUTE_ENABLED="true", INFERENCE_AUTO_ROUTE_STRATEGY="round_robin")
    answered = [chat(url, model="primary", max_tokens=1).json()["model"] for _ in range(4)]
    assert answered in ([GEMMA, SMOL, GEMMA, SMOL], [SMOL, GEMMA, SMOL, GEMMA])


def test_least_busy_across_models_prefers_the_idle_one(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(SMOL, **SLOW)
    start_worker(GEMMA, **SLOW)
    url = start_front(INFERENCE_AUTO_ROUTE_ENABLED="true", INFERENCE_AUTO_ROUTE_STRATEGY="least_busy")
    with ThreadPoolExecutor(max_workers=1) as pool:
        busy = pool.submit(chat, url, "busy", model=SMOL, max_tokens=40)
        time.sleep(0.3)
        assert chat(url, model="primary", max_tokens=1).json()["model"] == GEMMA
        busy.result()


def test_fallback_routes_to_a_loaded_model_with_the_role(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(SMOL, INFERENCE_BACKEND="null")
    routed = start_front(INFERENCE_AUTO_ROUTE_ENABLED="true", INFERENCE_AUTO_ROUTE_FALLBACK="true")
    answer = chat(routed, model=GEMMA, max_tokens=1)
    assert answer.status_code == 200 and answer.json()["model"] == SMOL
    strict = start_front(INFERENCE_AUTO_ROUTE_ENABLED="true", INFERENCE_AUTO_ROUTE_FALLBACK="false")
    assert chat(strict, model=GEMMA, max_tokens=1).status_code == 503
