"""Redis stops under load and comes back: 503s meanwhile, then service again with no restart."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import StartFront, StartWorker
from tests.faults.helpers import SLOW, SMOL, assert_nothing_left, body, wait_for, worker_ready
from tests.faults.redis_server import RedisServer

pytestmark = pytest.mark.redis


def test_fronts_and_workers_ride_out_a_redis_restart(
    private_redis: RedisServer, start_worker: StartWorker, start_front: StartFront, prefix: str, tmp_path: Path
) -> None:
    env = {**SLOW, "INFERENCE_NULL_TOKEN_DELAY_MS": "20", "INFERENCE_REDIS_URL": private_redis.url}
    worker = start_worker(SMOL, wait=False, **env)
    wait_for(lambda: worker_ready(private_redis.client(), prefix), timeout_s=60, what=worker.output())
    url = start_front(INFERENCE_REDIS_URL=private_redis.url)
    assert httpx.post(f"{url}/v1/chat/completions", json=body("before", max_tokens=3), timeout=30).status_code == 200

    statuses: Counter[int] = Counter()
    slowest_s = 0.0
    stop = threading.Event()

    def load() -> None:
        nonlocal slowest_s
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = httpx.post(f"{url}/v1/chat/completions", json=body("load", max_tokens=5), timeout=30)
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    assert response.headers.get("retry-after")
                    assert response.json()["error"]["code"] in ("broker_unavailable", "model_not_loaded")
                    slowest_s = max(slowest_s, time.monotonic() - started)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1  # type: ignore[index]
            time.sleep(0.05)

    clients = [threading.Thread(target=load) for _ in range(3)]
    for client in clients:
        client.start()
    time.sleep(1.0)
    private_redis.stop()
    down = time.monotonic()
    time.sleep(0.5)
    started = time.monotonic()
    refused = httpx.post(f"{url}/v1/chat/completions", json=body("during", max_tokens=3), timeout=30)
    answered_in_s = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"]
    assert answered_in_s < 2.0, answered_in_s
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200
    ready = httpx.get(f"{url}/health/ready", timeout=5)
    assert ready.status_code == 503
    assert "Redis" in ready.json()["reason"]
    time.sleep(2.0)

    private_redis.start()
    back = time.monotonic()

    def serves() -> bool:
        try:
            response = httpx.post(f"{url}/v1/chat/completions", json=body("after", max_tokens=3), timeout=10)
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    recovered_s = wait_for(serves, timeout_s=30, what="no answer after Redis came back")
    stop.set()
    for client in clients:
        client.join(timeout=60)
    print(f"outage {back - down:.1f}s; first answer {recovered_s:.2f}s after Redis returned; {dict(statuses)}")
    print(f"slowest 503 under load: {slowest_s:.2f}s")
    assert worker.process.poll() is None, "the worker exited"
    assert url.proc.process.poll() is None, "the front exited"
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] > 0 and statuses[503] > 0
    client = private_redis.client()
    assert_nothing_left(client, prefix, expiring_ok=True, timeout_s=10)
