"""The whole path front -> Redis -> worker -> pub/sub -> SSE, on the real Redis.

The worker here runs the null backend (an echoing fake model), so these tests pin the
queue's behaviour; tests/integration/test_real_model.py runs the same path on a real model.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import redis

from tests.conftest import StartFront, StartWorker

MODEL = "smollm2-135m"
pytestmark = pytest.mark.redis


def chat(url: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_openai_sdk_plain_and_streamed(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(MODEL, INFERENCE_BACKEND="null")
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")

    plain = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "alpha beta gamma"}], max_tokens=3
    )
    assert plain.choices[0].message.content == "alpha beta gamma"
    assert plain.choices[0].finish_reason == "length"
    assert plain.usage is not None and plain.usage.completion_tokens == 3

    stream = client.chat.completions.create(
        model=f"inference:{MODEL}",
        messages=[{"role": "user", "content": "one two"}],
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


def test_models_and_readiness_follow_the_workers(start_worker: StartWorker, start_front: StartFront) -> None:
    url = start_front()
    not_ready = httpx.get(f"{url}/health/ready")
    assert not_ready.status_code == 503 and not_ready.json()["status"] == "not_ready"
    worker = start_worker(MODEL, INFERENCE_BACKEND="null")
    ready = httpx.get(f"{url}/health/ready").json()
    assert ready["status"] == "ready" and ready["loaded_models"] == [MODEL]
    listed = httpx.get(f"{url}/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"] if m["status"] == "loaded"] == [MODEL]
    worker.stop()
    assert httpx.get(f"{url}/health/ready").status_code == 503


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": ""}, "model"),
        ({"n": 5}, "n"),
    ],
)
def test_invalid_bodies_are_openai_400s(start_front: StartFront, body: dict[str, object], param: str) -> None:
    url = start_front()
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
    response = httpx.post(f"{url}/v1/chat/completions", json=request)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_malformed_json_is_a_400(start_front: StartFront) -> None:
    response = httpx.post(
        f"{start_front()}/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_404_and_known_model_without_worker_is_503(start_front: StartFront) -> None:
    url = start_front()
    missing = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    idle = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "gemma3-270m", "messages": [{"role": "user", "content": "x"}]}
    )
    assert idle.status_code == 503
    assert int(idle.headers["retry-after"]) > 0
    assert idle.json()["error"]["param"] == "model"


def test_timeout_is_504_and_the_job_is_cancelled(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(MODEL, INFERENCE_BACKEND="null", INFERENCE_NULL_TOKEN_DELAY_MS="100")
    url = start_front(INFERENCE_REQUEST_TIMEOUT="1")
    started = time.monotonic()
    response = chat(url, "slow", max_tokens=100)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert time.monotonic() - started < 3
    # The worker stopped generating: a short job right after is served at once.
    after = time.monotonic()
    quick = chat(url, "next", max_tokens=2)
    assert quick.status_code == 200
    assert time.monotonic() - after < 0.9
    assert redis_client.hlen(f"{prefix}:running:{MODEL}") == 0


def test_streamed_timeout_ends_with_an_error_event(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(MODEL, INFERENCE_BACKEND="null", INFERENCE_NULL_TOKEN_DELAY_MS="100")
    url = start_front(INFERENCE_REQUEST_TIMEOUT="1")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "slow"}], "max_tokens": 100, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert '"code":"timeout"' in lines[-2]
    assert lines[-1] == "data: [DONE]"


def test_eight_concurrent_streams_each_get_their_own_text(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(MODEL, INFERENCE_BACKEND="null", INFERENCE_NULL_TOKEN_DELAY_MS="2")
    client = openai.OpenAI(base_url=start_front() + "/v1", api_key="unused")
    prompts = [" ".join(f"w{n}x{i}" for i in range(6)) for n in range(8)]

    def run(prompt: str) -> str:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=6, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(run, prompts))
    assert answers == prompts


def test_waiting_jobs_start_by_priority_then_arrival(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(MODEL, INFERENCE_BACKEND="null", INFERENCE_NULL_TOKEN_DELAY_MS="50")
    url = start_front()
    finished: list[str] = []
    lock = threading.Lock()

    def run(name: str, priority: int, tokens: int) -> None:
        response = chat(url, name, max_tokens=tokens, priority=priority)
        assert response.status_code == 200, response.text
        with lock:
            finished.append(name)

    with ThreadPoolExecutor(max_workers=6) as pool:
        blocker = pool.submit(run, "blocker", 2, 30)
        time.sleep(0.4)  # the blocker is running; everything below waits in the queue
        waiting = [("low1", 1), ("normal1", 2), ("high1", 3), ("low2", 1), ("high2", 3), ("normal2", 2)]
        futures = []
        for name, priority in waiting:
            futures.append(pool.submit(run, name, priority, 1))
            time.sleep(0.05)
        for future in [blocker, *futures]:
            future.result()
    assert finished == ["blocker", "high1", "high2", "normal1", "normal2", "low1", "low2"]
