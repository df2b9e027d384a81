"""Factory fixtures: a private key prefix on the real Redis, worker and front processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support import (
    TEST_REDIS_URL,
    Proc,
    clean_prefix,
    free_port,
    spawn,
    wait_for_http,
    wait_for_worker,
)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"the real Redis at {TEST_REDIS_URL} does not answer (.ci/run starts one)")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A key prefix no other test or process uses; its keys are deleted afterwards."""
    value = f"t{uuid.uuid4().hex[:10]}"
    yield value
    clean_prefix(redis_client, value)


@pytest.fixture
def service_env(prefix: str, models_dir: Path) -> dict[str, str]:
    return {
        "INFERENCE_REDIS_URL": TEST_REDIS_URL,
        "INFERENCE_KEY_PREFIX": prefix,
        "INFERENCE_MODELS_DIR": str(models_dir),
        "INFERENCE_LOG_LEVEL": "WARNING",
        "INFERENCE_N_THREADS": "2",
    }


class Front(str):
    """A running front's base URL; `.proc` is its process (for tests that kill it)."""

    proc: Proc


StartWorker = Callable[..., Proc]
StartFront = Callable[..., Front]


@pytest.fixture
def start_worker(
    service_env: dict[str, str], redis_client: redis.Redis, prefix: str, tmp_path: Path
) -> Iterator[StartWorker]:
    """start_worker(model, **env) runs `arq worker.Settings` for a model and waits until it is ready."""
    procs: list[Proc] = []

    def start(model: str, *, wait: bool = True, **env: str) -> Proc:
        worker_env = {**service_env, "INFERENCE_WORKER_MODEL": model, **env}
        proc = spawn(["-m", "arq", "worker.Settings"], env=worker_env, log=tmp_path / f"worker-{len(procs)}.log")
        procs.append(proc)
        if wait:
            wait_for_worker(redis_client, prefix=prefix, model=model, proc=proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def start_front(service_env: dict[str, str], tmp_path: Path) -> Iterator[StartFront]:
    """start_front(**env) runs the HTTP front on a free port and returns its base URL."""
    procs: list[Proc] = []

    def start(**env: str) -> Front:
        port = free_port()
        proc = spawn(
            ["-m", "api"],
            env={**service_env, "INFERENCE_PORT": str(port), **env},
            log=tmp_path / f"front-{len(procs)}.log",
        )
        procs.append(proc)
        url = Front(f"http://127.0.0.1:{port}")
        url.proc = proc
        wait_for_http(url, proc=proc)
        return url

    yield start
    for proc in procs:
        proc.stop()
