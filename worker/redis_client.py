"""Redis connection pools with a retry policy, one kind per role.

A front answers its client within a couple of seconds even while Redis is down: a few quick
retries, then the error surfaces as a 503. Workers and supervisors hold a loaded model and
have nobody waiting on them: their commands (pipelines included) retry until Redis is back,
so an outage pauses them instead of killing them.
"""

from __future__ import annotations

from typing import Literal, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, RedisError, TimeoutError

Role = Literal["front", "worker"]

_FRONT_RETRIES = 3
_FRONT_BACKOFF = {"cap": 0.25, "base": 0.05}
_WORKER_BACKOFF = {"cap": 1.0, "base": 0.05}
_CONNECT_TIMEOUT_S = 1.0


def create_pool(url: str, *, role: Role) -> ConnectionPool:
    """A pool whose connections retry failed commands as `role` needs (see the module doc)."""
    # A refused connection surfaces as a plain OSError inside redis-py's connect, before it
    # becomes a ConnectionError: without it here, a reconnect would not be retried at all.
    errors = cast("tuple[type[RedisError], ...]", (ConnectionError, TimeoutError, OSError))
    if role == "front":
        retry = Retry(ExponentialBackoff(**_FRONT_BACKOFF), _FRONT_RETRIES, supported_errors=errors)
    else:
        # A negative count retries forever.
        retry = Retry(ExponentialBackoff(**_WORKER_BACKOFF), -1, supported_errors=errors)
    # TCP keepalive has no meaning on a Unix socket, whose connection class refuses the option.
    tcp = {} if url.startswith("unix://") else {"socket_keepalive": True}
    return ConnectionPool.from_url(
        url,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError],
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        # A connection that sat idle across a Redis restart is checked before use.
        health_check_interval=10,
        **tcp,
    )


def create_redis(url: str, *, role: Role) -> Redis:
    return Redis(connection_pool=create_pool(url, role=role))
