"""Connection pools per role and per transport (TCP or a Unix socket)."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

from worker.redis_client import create_pool


@pytest.mark.parametrize("role", ["front", "worker"])
def test_tcp_pool_keeps_connections_alive(role: str) -> None:
    pool = create_pool("redis://127.0.0.1:6379/3", role=role)  # type: ignore[arg-type]
    assert pool.connection_class is Connection
    assert pool.connection_kwargs["socket_keepalive"] is True
    assert pool.connection_kwargs["db"] == 3


@pytest.mark.parametrize("role", ["front", "worker"])
def test_unix_socket_pool_builds_connections(role: str) -> None:
    pool = create_pool("unix:///run/redis/redis.sock?db=5", role=role)  # type: ignore[arg-type]
    assert pool.connection_class is UnixDomainSocketConnection
    assert "socket_keepalive" not in pool.connection_kwargs
    assert pool.connection_kwargs["path"] == "/run/redis/redis.sock"
    assert pool.connection_kwargs["db"] == 5
    # The retry policy is the same on either transport: an outage pauses, it does not kill.
    assert pool.connection_kwargs["retry"] is not None
    # Building a connection is where an option the class does not know would raise.
    connection = pool.make_connection()
    assert connection.path == "/run/redis/redis.sock"  # type: ignore[attr-defined]
