"""Fault tests: a private redis-server the tests may stop and start (never the shared one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.redis_server import RedisServer
from tests.support import free_port


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), folder=tmp_path / "redis")
    server.start()
    yield server
    server.stop()
