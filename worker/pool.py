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
from redis.asyncio.client import PubSub

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
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: PubSub | None = None

    async def start_wake_listener(self) -> None:
        self._pubsub = self.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._wake_channel)
        self._listener = asyncio.create_task(self._listen(self._pubsub), name="wake-listener")

    async def stop_wake_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def wake(self) -> None:
        """Make the next (or the current) idle wait return at once."""
        self._woken.set()

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:  # a dropped connection: fall back to polling until it returns
                logger.warning("wake channel lost; polling every %.1fs", self._idle_wait_s, exc_info=True)
                await asyncio.sleep(self._idle_wait_s)
                continue
            if message is not None:
                self._woken.set()

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
