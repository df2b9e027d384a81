"""Front and worker on a Redis reached over a Unix socket (INFERENCE_REDIS_URL=unix://...?db=N).

A private redis-server that listens on a socket only, so nothing here can fall back to TCP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import StartFront, StartWorker
from tests.faults.helpers import SMOL, body, stream_events, wait_for, worker_ready
from tests.faults.redis_server import RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def socket_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=0, folder=tmp_path / "r", unix_socket=True)
    server.start()
    yield server
    server.stop()


def _streamed_text(url: str, content: str) -> str:
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body(content, max_tokens=3, stream=True), timeout=30
    ) as response:
        assert response.status_code == 200
        chunks = [event for event in stream_events(response) if isinstance(event, dict)]
    return "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])  # type: ignore[attr-defined]


def test_the_queue_path_over_a_unix_socket_and_across_its_restart(
    socket_redis: RedisServer,
    start_worker: StartWorker,
    start_front: StartFront,
    prefix: str,
    redis_client: redis.Redis,
) -> None:
    # A short heartbeat: the worker announces itself again soon after the restart.
    env = {"INFERENCE_BACKEND": "null", "INFERENCE_REDIS_URL": socket_redis.url, "INFERENCE_HEARTBEAT_TTL_S": "2"}
    worker = start_worker(SMOL, wait=False, **env)
    wait_for(lambda: worker_ready(socket_redis.client(), prefix), timeout_s=60, what=worker.output)
    url = start_front(INFERENCE_REDIS_URL=socket_redis.url)
    assert _streamed_text(url, "alpha beta gamma") == "alpha beta gamma"
    # Everything went through the socket's server: the shared one on TCP saw none of it.
    assert not list(redis_client.scan_iter(f"{prefix}:*"))

    # The socket file goes away with the server: reconnecting must survive that, too.
    socket_redis.stop()
    socket_redis.start()
    wait_for(lambda: worker_ready(socket_redis.client(), prefix), timeout_s=60, what=worker.output)

    def served() -> bool:
        try:
            return _streamed_text(url, "one two three") == "one two three"
        except AssertionError:
            return False

    wait_for(served, timeout_s=30, what="no answer after Redis came back on its socket")
