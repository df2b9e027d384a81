"""Factory fixtures for the worker's tests: an async client on the real Redis, batched engines on SmolLM2."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from presets.embedded import resolve_embedded
from tests.support import TEST_REDIS_URL
from worker.batched_engine import BatchedLlamaEngine

MakeEngine = Callable[..., BatchedLlamaEngine]


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_embedded("smollm2-135m", models_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture
def make_engine(model_path: Path) -> Iterator[MakeEngine]:
    """make_engine(**options) loads SmolLM2 in a BatchedLlamaEngine (4 slots, n_ctx 1024 unless given)."""
    built: list[BatchedLlamaEngine] = []

    def make(**options: object) -> BatchedLlamaEngine:
        settings: dict[str, object] = {"n_ctx": 1024, "slots": 4, "n_threads": 2, "gpu_layers": 0, **options}
        engine = BatchedLlamaEngine(model_id="smollm2-135m", path=model_path, **settings)  # type: ignore[arg-type]
        built.append(engine)
        return engine

    yield make
    for engine in built:
        engine.close()
