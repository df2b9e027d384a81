"""A background task reading one pub/sub connection, shared by fronts and workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio.client import PubSub

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


class Listener:
    """Hands every message of a PubSub to `handle`; rides out dropped connections.

    redis-py resubscribes on reconnect, so after an error the loop only waits `retry_s`.
    """

    def __init__(
        self,
        pubsub: PubSub,
        handle: Handler,
        *,
        name: str,
        retry_s: float = 0.5,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.pubsub = pubsub
        # Told when the connection is lost: what it subscribed is not heard until it is back.
        self._on_lost = on_lost
        self._handle = handle
        self._name = name
        self._retry_s = retry_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("%s lost its connection; retrying in %.1fs", self._name, self._retry_s, exc_info=True)
                if self._on_lost is not None:
                    self._on_lost()
                await asyncio.sleep(self._retry_s)
                continue
            if message is None:
                continue
            outcome = self._handle(message)
            if outcome is not None:
                await outcome

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
