"""One pub/sub connection per front, shared by every request it serves.

Each request subscribes to its own channel before its job is queued, and waits for the
server's subscribe confirmation, so not even the first token can be published unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from api.errors import BrokerUnavailable
from worker.listener import Listener
from worker.protocol import Event, decode_event

logger = logging.getLogger(__name__)

_CONFIRM_WAIT_S = 1.5


class EventHub:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub | None = None
        self._listener: Listener | None = None
        self._inboxes: dict[str, asyncio.Queue[Event]] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        # A placeholder subscription keeps the connection in pub/sub mode between requests.
        await self._pubsub.subscribe("__hub__")
        self._listener = Listener(self._pubsub, self._dispatch, name="event hub")
        self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if message["type"] == "subscribe":
            waiter = self._confirmations.pop(channel, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        inbox = self._inboxes.get(channel)
        if message["type"] != "message" or inbox is None:
            return
        try:
            inbox.put_nowait(decode_event(message["data"]))
        except Exception:
            logger.warning("undecodable event on %s", channel)

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[asyncio.Queue[Event]]:
        if self._pubsub is None:
            raise RuntimeError("event hub not started")
        inbox: asyncio.Queue[Event] = asyncio.Queue()
        confirmed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inboxes[channel] = inbox
        self._confirmations[channel] = confirmed
        try:
            async with self._lock:
                await self._pubsub.subscribe(channel)
            try:
                await asyncio.wait_for(confirmed, timeout=_CONFIRM_WAIT_S)
            except TimeoutError:
                # The pub/sub connection is down (its listener is reconnecting).
                raise BrokerUnavailable() from None
            yield inbox
        finally:
            self._inboxes.pop(channel, None)
            self._confirmations.pop(channel, None)
            with contextlib.suppress(Exception):
                async with self._lock:
                    await self._pubsub.unsubscribe(channel)
