"""The worker's Redis pool: arq's, made to wake at once when a job is queued.

arq polls its queue every `poll_delay`; at its default of 0.5 s that would add about
250 ms to every first token. Our pool answers arq's queue read like Redis would, except
that an empty read waits on the model's wake channel (bounded by `idle_wait_s`, the slow
fallback poll) and reads again as soon as a front announces a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from worker.listener import Listener

logger = logging.getLogger(__name__)


class WakeablePool(ArqRedis):
    def __init__(
        self, pool: ConnectionPool, *, queue_name: str, wake_channel: str, idle_wait_s: float, **kwargs: Any
    ) -> None:
        super().__init__(pool, default_queue_name=queue_name, **kwargs)
        self._queue_name = queue_name
        self._wake_channel = wake_channel
        self._idle_wait_s = idle_wait_s
        self._woken = asyncio.Event()
        self._listener: Listener | None = None

    async def start_wake_listener(self) -> None:
        pubsub = self.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._wake_channel)
        # While the connection is down the idle wait times out: the fallback poll.
        self._listener = Listener(pubsub, lambda _: self._woken.set(), name="wake listener", retry_s=self._idle_wait_s)
        self._listener.start()

    async def stop_wake_listener(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> OutageSafePipeline:
        return OutageSafePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)

    async def zrangebyscore(  # type: ignore[override]
        self, name: Any, min: Any, max: Any, start: int | None = None, num: int | None = None, **kwargs: Any
    ) -> Any:
        is_queue_read = name == self._queue_name and self._listener is not None
        if is_queue_read:
            self._woken.clear()
        found = await super().zrangebyscore(name, min, max, start=start, num=num, **kwargs)
        if found or not is_queue_read:
            return found
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), self._idle_wait_s)
        return await super().zrangebyscore(name, min, timestamp_ms(), start=start, num=num, **kwargs)


class OutageSafePipeline(Pipeline):
    """A pipeline whose optimistic transaction fails where arq expects it to, not earlier.

    redis-py raises WatchError at the command that meets a lost connection while keys are
    watched. arq reads keys between WATCH and EXEC without guarding those reads, so a Redis
    restart at that moment would end the worker. Here the reads are retried on a new
    connection and the transaction is refused at EXEC instead, which arq treats as "another
    worker took the job": the job stays queued and the next poll takes it.
    """

    _lost_watch = False

    async def _disconnect_reset_raise(self, conn: Any, error: Exception) -> None:
        if self.watching:
            await conn.disconnect()
            self._lost_watch = True
            return
        await super()._disconnect_reset_raise(conn, error)  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True) -> Any:
        if self._lost_watch:
            await self.reset()
            raise WatchError("the connection was lost while keys were watched; nothing was run")
        return await super().execute(raise_on_error)

    async def reset(self) -> None:
        self._lost_watch = False
        await super().reset()  # type: ignore[no-untyped-call]
