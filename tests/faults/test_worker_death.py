"""A worker killed mid-job: the job runs again elsewhere unless its client saw part of it."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
import redis

from tests.conftest import StartFront, StartWorker
from tests.faults.helpers import (
    SLOW,
    SMOL,
    assert_nothing_left,
    body,
    running_worker_pid,
    stream_events,
    wait_for,
)

pytestmark = pytest.mark.redis


def test_a_plain_request_survives_its_worker_being_killed(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, **SLOW)
    start_worker(SMOL, **SLOW)
    url = start_front()
    outcome: dict[str, httpx.Response] = {}
    words = " ".join(f"w{i}" for i in range(30))

    def ask() -> None:
        outcome["response"] = httpx.post(f"{url}/v1/chat/completions", json=body(words, max_tokens=30), timeout=60)

    thread = threading.Thread(target=ask)
    thread.start()
    running = f"{prefix}:running:{SMOL}"
    wait_for(lambda: redis_client.hlen(running) == 1, timeout_s=10, what="the job never started")
    time.sleep(0.5)  # some tokens are out
    os.kill(running_worker_pid(redis_client, prefix), signal.SIGKILL)
    killed = time.monotonic()
    thread.join(timeout=60)
    recovered_s = time.monotonic() - killed
    response = outcome["response"]
    assert response.status_code == 200, response.text
    # The answer is the whole echo, once: the re-run's text replaced the first run's.
    assert response.json()["choices"][0]["message"]["content"] == words
    assert response.json()["usage"]["completion_tokens"] == 30
    # Found by the heartbeat TTL (2 s) plus a reap, then a 3 s re-run; far from the 120 s deadline.
    assert recovered_s < 20, recovered_s
    print(f"plain request recovered {recovered_s:.2f}s after the kill")
    assert_nothing_left(redis_client, prefix)


def test_a_stream_that_sent_tokens_ends_with_an_error_when_its_worker_dies(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, **SLOW)
    url = start_front()
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body("a b c d", max_tokens=200, stream=True), timeout=60
    ) as response:
        lines = response.iter_lines()
        for line in lines:
            if '"content":"a"' in line:
                break
        os.kill(running_worker_pid(redis_client, prefix), signal.SIGKILL)
        killed = time.monotonic()
        rest = [line for line in lines if line.startswith("data: ")]
    ended_s = time.monotonic() - killed
    assert rest[-1] == "data: [DONE]"
    assert '"code":"worker_died"' in rest[-2], rest[-3:]
    assert not any('"finish_reason":"stop"' in line for line in rest)
    # Heartbeat TTL 2 s plus a second, not the request deadline.
    assert ended_s < 10, ended_s
    print(f"stream ended {ended_s:.2f}s after the kill")
    assert_nothing_left(redis_client, prefix)


def test_an_orchestration_step_survives_its_worker_being_killed(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    for model in (SMOL, SMOL, "gemma3-270m", "gemma3-270m"):
        start_worker(model, **SLOW)
    url = start_front()
    outcome: dict[str, httpx.Response] = {}

    def ask() -> None:
        request = body("one two three four five", max_tokens=20, orchestration_mode="ensemble")
        outcome["response"] = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=90)

    thread = threading.Thread(target=ask)
    thread.start()
    running = f"{prefix}:running:{SMOL}"
    wait_for(lambda: redis_client.hlen(running) >= 1, timeout_s=10, what="no step started on smollm2")
    entries = redis_client.hgetall(running)
    worker_id = next(iter(entries.values())).decode()
    os.kill(int(redis_client.hget(f"{prefix}:worker:{SMOL}:{worker_id}", "pid") or 0), signal.SIGKILL)
    thread.join(timeout=90)
    response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["orchestration"]["mode"] == "ensemble"
    assert set(response.json()["orchestration"]["models_used"]) == {SMOL, "gemma3-270m"}
    assert_nothing_left(redis_client, prefix)


def test_a_stream_with_no_token_yet_is_run_again(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    # The first worker is too slow to send a token before it is killed.
    stalled = start_worker(SMOL, **{**SLOW, "INFERENCE_NULL_TOKEN_DELAY_MS": "30000"})
    url = start_front()
    events: list[dict[str, object] | str] = []

    def ask() -> None:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body("x y", max_tokens=4, stream=True), timeout=60
        ) as response:
            events.extend(stream_events(response))

    thread = threading.Thread(target=ask)
    thread.start()
    wait_for(lambda: redis_client.hlen(f"{prefix}:running:{SMOL}") == 1, timeout_s=10, what="never started")
    start_worker(SMOL, **SLOW)
    stalled.process.kill()
    thread.join(timeout=60)
    chunks = [e for e in events if isinstance(e, dict)]
    assert events[-1] == "[DONE]"
    assert not any("error" in e for e in chunks), chunks
    text = "".join(str(e["choices"][0]["delta"].get("content") or "") for e in chunks if e.get("choices"))  # type: ignore[index]
    # The null model repeats the words: "x", " y", "x", " y".
    assert text == "x yx y"
    assert_nothing_left(redis_client, prefix)
