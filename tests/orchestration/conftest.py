"""Fixtures for the orchestration tests: a DAG harness over fakeredis."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import fakeredis
import pytest
from arq.connections import ArqRedis

from presets.settings import Settings
from tests.orchestration.harness import Harness
from worker.protocol import arq_deserialize, arq_serialize


@pytest.fixture(autouse=True)
def _no_inference_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings read INFERENCE_*; a developer's shell must not change the thresholds under test.
    for name in list(os.environ):
        if name.startswith("INFERENCE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        key_prefix="o",
        critique_max_rounds=2,
        critique_threshold=0.8,
        debate_max_rounds=3,
        debate_agreement_threshold=0.8,
        ensemble_min_agreement=0.7,
        dag_ttl_s=600,
    )


@pytest.fixture
async def pool() -> AsyncIterator[ArqRedis]:
    fake = fakeredis.FakeAsyncRedis()
    redis = ArqRedis(fake.connection_pool, job_serializer=arq_serialize, job_deserializer=arq_deserialize)
    yield redis
    await redis.aclose()


@pytest.fixture
async def dag(pool: ArqRedis, settings: Settings) -> AsyncIterator[Harness]:
    harness = Harness(pool, settings)
    yield harness
    await harness.close()
