"""GET /metrics on the real Redis: a null-backend worker, two fronts, requests, scrapes.

Counters come from Redis, so the second front, which served nothing, shows the first one's
requests and the worker's tokens too. Workers flush with their heartbeat, so the test polls
until the numbers arrive; it asserts on counts, never on how long anything took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartFront, StartWorker

MODEL = "smollm2-135m"
pytestmark = pytest.mark.redis

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def poll(url: str, ready: Callable[[Samples], bool], *, timeout_s: float = 20) -> Samples:
    deadline = time.monotonic() + timeout_s
    samples = scrape(url)
    while not ready(samples) and time.monotonic() < deadline:
        time.sleep(0.2)
        samples = scrape(url)
    return samples


def chat(url: str, content: str, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def test_metrics_count_the_whole_fleet(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(MODEL, INFERENCE_BACKEND="null", INFERENCE_HEARTBEAT_TTL_S="1.5")
    front = start_front()
    other_front = start_front()

    before = scrape(other_front)
    assert value(before, "inference_workers", model=MODEL, state="ready") == 1
    assert value(before, "inference_queue_depth", model=MODEL, priority="2") == 0
    assert value(before, "inference_admitted_requests") == 0
    assert value(before, "inference_requests_total", model=MODEL, mode="single", status="200") is None

    assert chat(front, "alpha beta gamma", max_tokens=3).status_code == 200
    assert chat(front, "delta epsilon", max_tokens=3).status_code == 200
    with httpx.stream(
        "POST",
        f"{front}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "one two"}], "max_tokens": 2, "stream": True},
        timeout=30,
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.read().endswith(b"data: [DONE]\n\n")
    assert chat(front, "hello", model="no-such-model").status_code == 404

    def complete(samples: Samples) -> bool:
        return (
            value(samples, "inference_requests_total", model=MODEL, mode="single", status="200") == 3
            and value(samples, "inference_time_to_first_token_seconds_count", model=MODEL) == 3
            # A front adds its counts each second: the 404 may land in the write after the 200s.
            and value(samples, "inference_requests_total", model="none", mode="single", status="404") is not None
        )

    samples = poll(other_front, complete)
    assert value(samples, "inference_requests_total", model=MODEL, mode="single", status="200") == 3
    assert value(samples, "inference_requests_total", model="none", mode="single", status="404") == 1
    assert value(samples, "inference_generation_tokens_total", model=MODEL) == 3 + 3 + 2
    assert (value(samples, "inference_prompt_tokens_total", model=MODEL) or 0) > 0
    for histogram in (
        "inference_time_to_first_token_seconds",
        "inference_time_per_output_token_seconds",
        "inference_e2e_request_latency_seconds",
    ):
        assert value(samples, f"{histogram}_count", model=MODEL) == 3, histogram
        assert value(samples, f"{histogram}_bucket", model=MODEL, le="+Inf") == 3, histogram
        assert (value(samples, f"{histogram}_sum", model=MODEL) or 0) > 0, histogram
    assert value(samples, "inference_admitted_requests") == 0
    assert value(samples, "inference_queue_depth", model=MODEL, priority="2") == 0
    # Either front answers alike once the first one's counts are flushed.
    assert value(scrape(front), "inference_generation_tokens_total", model=MODEL) == 8


def test_json_logs_name_the_request(start_worker: StartWorker, start_front: StartFront) -> None:
    worker = start_worker(MODEL, INFERENCE_BACKEND="null", INFERENCE_LOG_FORMAT="json", INFERENCE_LOG_LEVEL="INFO")
    front = start_front(INFERENCE_LOG_FORMAT="json", INFERENCE_LOG_LEVEL="INFO")
    answer = chat(front, "alpha beta", max_tokens=2)
    assert answer.status_code == 200
    request_id = answer.headers["X-Request-Id"]

    deadline = time.monotonic() + 10
    while request_id not in front.proc.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    front_lines = [json.loads(line) for line in front.proc.output().splitlines() if line.strip()]
    assert front_lines, "the front logged nothing"
    for line in front_lines:
        assert {"timestamp", "level", "logger", "message"} <= line.keys()
    mine = [line for line in front_lines if line.get("request_id") == request_id]
    assert mine, front_lines
    assert all(line["model"] == MODEL and "elapsed_ms" in line for line in mine)

    worker_lines = [json.loads(line) for line in worker.output().splitlines() if line.strip().startswith("{")]
    assert any(line.get("model") == MODEL and line.get("worker_id") for line in worker_lines), worker.output()
