"""Every orchestration mode end to end: the embedded presets, real workers, real tiny models."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from arq.connections import ArqRedis

from orchestration.start import read_dag
from tests.conftest import StartFront, StartWorker
from tests.support import TEST_REDIS_URL
from worker.keys import Keys

pytestmark = [pytest.mark.redis, pytest.mark.model]
SMOL, GEMMA = "smollm2-135m", "gemma3-270m"
# Small budgets keep the slower gemma3 steps short; the modes' logic is the same.
FAST = {"INFERENCE_JUDGE_MAX_TOKENS": "24", "INFERENCE_DEBATE_MAX_ROUNDS": "2", "INFERENCE_CRITIQUE_MAX_ROUNDS": "2"}


def both_workers(start_worker: StartWorker) -> None:
    start_worker(SMOL, **FAST)
    start_worker(GEMMA, **FAST)


def post(url: str, **body: object) -> httpx.Response:
    request = {"model": "auto", "messages": [{"role": "user", "content": "Name a primary colour."}], **body}
    return httpx.post(f"{url}/v1/chat/completions", json=request, timeout=300)


@pytest.mark.parametrize(
    ("config", "mode", "min_rounds"),
    [("E2", "critique", 1), ("E3", "debate", 1), ("E4", "ensemble", 1), ("E5", "pipeline", 2)],
)
def test_each_mode_answers_with_its_orchestration_record(
    start_worker: StartWorker, start_front: StartFront, config: str, mode: str, min_rounds: int
) -> None:
    both_workers(start_worker)
    url = start_front(INFERENCE_CONFIG=config, **FAST)
    response = post(url, max_tokens=12, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    record = body["orchestration"]
    assert record["mode"] == mode
    assert set(record["models_used"]) == {SMOL, GEMMA}
    assert record["rounds"] >= min_rounds
    assert 0.0 <= record["confidence"] <= 1.0
    assert body["model"] in (SMOL, GEMMA)
    assert body["choices"][0]["message"]["content"].strip()
    # usage sums every step: more completion tokens than the answer alone could hold
    assert body["usage"]["completion_tokens"] > 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_streamed_debate_shows_steps_as_comments_then_the_answer(
    start_worker: StartWorker, start_front: StartFront
) -> None:
    both_workers(start_worker)
    url = start_front(**FAST)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Is water wet?"}],
        "max_tokens": 10,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "orchestration_mode": "debate",
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    comments = [line for line in lines if line.startswith(":")]
    data = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert any("debate.r1" in line for line in comments)
    assert lines[-1] == "data: [DONE]"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in data if c["choices"])
    assert content.strip()
    finish = [c for c in data if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[-1]["orchestration"]["mode"] == "debate"
    # Every chunk names the model that wrote the answer, as the non-streamed response does.
    assert len({c["model"] for c in data}) == 1 and data[0]["model"] in (SMOL, GEMMA)
    assert data[-1]["usage"]["completion_tokens"] > 10


def test_a_mode_needing_two_models_with_one_loaded_is_a_400(start_worker: StartWorker, start_front: StartFront) -> None:
    start_worker(SMOL)
    url = start_front(INFERENCE_PRELOAD_MODELS=SMOL)
    response = post(url, orchestration_mode="ensemble")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "orchestration_mode"


def dag_status(prefix: str, request_id: str) -> str | None:
    async def read() -> str | None:
        pool = ArqRedis.from_url(TEST_REDIS_URL)
        try:
            view = await read_dag(pool, keys=Keys(prefix=prefix), dag_id=request_id)
            return None if view is None else view.status
        finally:
            await pool.aclose()

    return asyncio.run(read())


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def stream_until_first_step(url: str, **extra: object) -> tuple[httpx.Client, httpx.Response, str, Iterator[str]]:
    client = httpx.Client(timeout=300)
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "max_tokens": 12,
        "stream": True,
        "orchestration_mode": "critique",
        **extra,
    }
    response = client.send(client.build_request("POST", f"{url}/v1/chat/completions", json=body), stream=True)
    # Kept, not left by `break`: closing the line iterator would close the connection.
    lines = response.iter_lines()
    while not next(lines).startswith(": step"):
        pass
    return client, response, response.headers["x-request-id"], lines


def test_the_dag_finishes_in_redis_when_the_front_dies_mid_run(
    start_worker: StartWorker, start_front: StartFront, prefix: str
) -> None:
    both_workers(start_worker)
    url = start_front(**FAST)
    client, response, request_id, _lines = stream_until_first_step(url)
    url.proc.process.kill()
    response.close()
    client.close()
    assert dag_status(prefix, request_id) == "running"
    wait_until(lambda: dag_status(prefix, request_id) == "done", timeout_s=60, what="the DAG never finished")


def test_a_client_that_disconnects_cancels_the_remaining_steps(
    start_worker: StartWorker, start_front: StartFront, prefix: str, redis_client: redis.Redis
) -> None:
    both_workers(start_worker)
    url = start_front(**FAST)
    client, response, request_id, _lines = stream_until_first_step(url)
    response.close()
    client.close()
    wait_until(lambda: dag_status(prefix, request_id) == "cancelled", timeout_s=30, what="the DAG was not cancelled")
    time.sleep(1.0)
    assert not any(redis_client.zcard(f"{prefix}:q:{model}") for model in (SMOL, GEMMA)), (
        "steps still queued after the cancel"
    )
    assert not any(redis_client.hlen(f"{prefix}:running:{model}") for model in (SMOL, GEMMA))
