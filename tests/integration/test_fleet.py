"""Load and unload end to end: the fleet supervisor, real workers, the two tiny models."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import StartFront, StartWorker
from tests.support import Proc, spawn, wait_for_worker

pytestmark = [pytest.mark.redis, pytest.mark.model]
SMOL, GEMMA = "smollm2-135m", "gemma3-270m"

StartFleet = Callable[..., Proc]


@pytest.fixture
def start_fleet(service_env: dict[str, str], tmp_path: Path) -> Iterator[StartFleet]:
    procs: list[Proc] = []

    def start(**env: str) -> Proc:
        proc = spawn(["-m", "worker.fleet"], env={**service_env, **env}, log=tmp_path / f"fleet-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def wait_ready(url: str, timeout_s: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(f"{url}/health/ready")
        if response.status_code == 200:
            body: dict[str, object] = response.json()
            return body
        assert response.json()["status"] == "not_ready"
        time.sleep(0.1)
    raise TimeoutError("never ready")


def statuses(url: str) -> dict[str, str]:
    return {m["id"]: m["status"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def ask(url: str, model: str, *, max_tokens: int = 3, **extra: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": max_tokens, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_fleet_serves_the_preset_and_readiness_reports_progress(
    start_fleet: StartFleet, start_front: StartFront
) -> None:
    url = start_front()
    first = httpx.get(f"{url}/health/ready")
    assert first.status_code == 503
    assert first.json() == {"status": "not_ready", "reason": "Models still loading", "progress": "0/2"}
    start_fleet()
    ready = wait_ready(url)
    assert ready == {"status": "ready", "config": "E1", "loaded_models": [GEMMA, SMOL], "orchestration_mode": "single"}
    listed = httpx.get(f"{url}/v1/models").json()
    assert listed["config"] == "E1" and listed["orchestration_mode"] == "single"
    cards = {m["id"]: m for m in listed["data"]}
    assert len(cards) == 7
    # The worker reports the window it runs at: smollm2's own 8K, INFERENCE_N_CTX being unset.
    assert cards[SMOL]["status"] == "loaded" and cards[SMOL]["context_length"] == 8192
    assert cards[SMOL]["roles"] == ["fast", "primary"] and cards[SMOL]["object"] == "model"
    assert cards["phi-4"]["status"] == "unavailable" and cards["phi-4"]["context_length"] == 16384
    assert all(isinstance(card["memory_mb"], int) and card["memory_mb"] > 0 for card in cards.values())


ROUTES = [
    (f"inference:{SMOL}", None, SMOL),
    (f"local:{GEMMA}", None, GEMMA),
    ("fast", None, SMOL),
    ("thinker", None, GEMMA),
    ("auto", "code", GEMMA),
    ("auto", "classify", SMOL),
    (SMOL, "code", SMOL),
]


def test_routing_names_the_model_that_answered(start_fleet: StartFleet, start_front: StartFront) -> None:
    url = start_front()
    start_fleet()
    wait_ready(url)
    answered = []
    for requested, task_type, _ in ROUTES:
        extra = {"task_type": task_type} if task_type else {}
        response = ask(url, requested, max_tokens=1, **extra)
        assert response.status_code == 200, response.text
        answered.append(response.json()["model"])
    assert answered == [expected for *_, expected in ROUTES]


def test_unload_lets_the_running_request_finish_then_frees_the_worker(
    start_fleet: StartFleet, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    url = start_front()
    start_fleet()
    wait_ready(url)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(ask, url, SMOL, max_tokens=80, temperature=0.8)
        deadline = time.monotonic() + 30
        while not redis_client.hlen(f"{prefix}:running:{SMOL}"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        unloaded = httpx.post(f"{url}/v1/models/{SMOL}/unload", timeout=120)
        answer = running.result()
    assert unloaded.status_code == 200 and unloaded.json()["status"] == "unloaded"
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] > 0
    assert statuses(url)[SMOL] == "available"
    assert not list(redis_client.scan_iter(match=f"{prefix}:worker:{SMOL}:*"))
    idle = ask(url, SMOL)
    assert idle.status_code == 503 and "retry-after" in idle.headers


def test_a_request_waits_for_a_model_that_is_loading(start_fleet: StartFleet, start_front: StartFront) -> None:
    url = start_front()
    start_fleet()
    wait_ready(url)
    assert httpx.post(f"{url}/v1/models/{GEMMA}/unload", timeout=60).json()["status"] == "unloaded"
    loader = threading.Thread(target=lambda: httpx.post(f"{url}/v1/models/{GEMMA}/load", timeout=120))
    loader.start()
    deadline = time.monotonic() + 10
    while statuses(url)[GEMMA] != "loading":
        assert time.monotonic() < deadline, "the load never showed as loading"
        time.sleep(0.01)
    answer = ask(url, GEMMA, max_tokens=2)
    loader.join()
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == GEMMA


def test_memory_budget_refuses_a_load_naming_what_to_unload(start_fleet: StartFleet, start_front: StartFront) -> None:
    env = {"INFERENCE_PRELOAD_MODELS": SMOL, "INFERENCE_MEMORY_BUDGET_MB": "400"}
    url = start_front(**env)
    start_fleet(**env)
    wait_ready(url)
    refused = httpx.post(f"{url}/v1/models/{GEMMA}/load", timeout=60)
    assert refused.status_code == 409
    message = refused.json()["error"]["message"]
    assert "400 MB budget" in message and f"unload one of: {SMOL}" in message
    assert statuses(url)[GEMMA] == "available"


def test_lru_eviction_makes_room_when_switched_on(start_fleet: StartFleet, start_front: StartFront) -> None:
    env = {"INFERENCE_PRELOAD_MODELS": SMOL, "INFERENCE_MEMORY_BUDGET_MB": "400", "INFERENCE_EVICT_LRU": "true"}
    url = start_front(**env)
    start_fleet(**env)
    wait_ready(url)
    assert ask(url, SMOL).status_code == 200
    loaded = httpx.post(f"{url}/v1/models/{GEMMA}/load", timeout=120)
    assert loaded.status_code == 200, loaded.text
    deadline = time.monotonic() + 30
    while statuses(url)[SMOL] != "available":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert statuses(url)[GEMMA] == "loaded"


def test_a_worker_started_by_hand_is_seen_like_the_fleets(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    url = start_front(INFERENCE_PRELOAD_MODELS=SMOL)
    proc = start_worker(GEMMA)
    wait_for_worker(redis_client, prefix=prefix, model=GEMMA, proc=proc)
    assert statuses(url)[GEMMA] == "loaded"
    assert ask(url, GEMMA, max_tokens=1).json()["model"] == GEMMA
    assert httpx.post(f"{url}/v1/models/{GEMMA}/unload", timeout=60).json()["status"] == "unloaded"
    proc.process.wait(timeout=30)
    assert proc.process.returncode == 0


def test_load_without_a_supervisor_is_a_503_and_unknown_models_404(start_front: StartFront) -> None:
    url = start_front()
    assert httpx.post(f"{url}/v1/models/{GEMMA}/load", timeout=30).status_code == 503
    missing = httpx.post(f"{url}/v1/models/nope/load", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    absent = httpx.post(f"{url}/v1/models/phi-4/load", timeout=30)
    assert absent.status_code == 409 and "python -m presets download phi-4" in absent.json()["error"]["message"]
