"""One pub/sub connection per front, shared by every request it serves.

Every request id a front makes begins with the front's own random tag, so its requests'
channels (`inf:ev:<request id>`) all match one pattern, subscribed once at start-up. A
request then needs no SUBSCRIBE of its own: registering its inbox is enough, and as long as
the pattern subscription is live not even the first token can be published unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from api.errors import BrokerUnavailable
from worker.keys import Keys
from worker.listener import Listener
from worker.protocol import Event, decode_event

logger = logging.getLogger(__name__)

_CONFIRM_WAIT_S = 1.5
_REQUEST_PREFIX = "chatcmpl-"
# Hex digits of the front's tag at the start of each request id; the rest stays random.
_TAG_CHARS = 8


class EventHub:
    def __init__(self, redis: Redis, *, keys: Keys) -> None:
        self._redis = redis
        self._tag = secrets.token_hex(_TAG_CHARS // 2)
        self._pattern = keys.events(f"{_REQUEST_PREFIX}{self._tag}") + "*"
        self._pubsub: PubSub | None = None
        self._listener: Listener | None = None
        self._inboxes: dict[str, asyncio.Queue[Event]] = {}
        # Set while the pattern subscription is confirmed on a connection that is up.
        self._live = asyncio.Event()

    def new_request_id(self) -> str:
        """A request id whose event channel this hub hears (32 hex digits after the prefix)."""
        return f"{_REQUEST_PREFIX}{self._tag}{uuid.uuid4().hex[_TAG_CHARS:]}"

    async def start(self) -> None:
        self._pubsub = self._redis.pubsub()
        await self._pubsub.psubscribe(self._pattern)
        self._listener = Listener(self._pubsub, self._dispatch, name="event hub", on_lost=self._live.clear)
        self._listener.start()

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "psubscribe":
            # Also after a reconnect: redis-py subscribes the pattern again.
            self._live.set()
            return
        if kind != "pmessage":
            return
        inbox = self._inboxes.get(message["channel"].decode())
        if inbox is None:
            return
        try:
            inbox.put_nowait(decode_event(message["data"]))
        except Exception:
            logger.warning("undecodable event on %s", message["channel"])

    @contextlib.asynccontextmanager
    async def subscription(self, channel: str) -> AsyncIterator[asyncio.Queue[Event]]:
        """The inbox of one request's channel (one that `new_request_id` named)."""
        if self._pubsub is None:
            raise RuntimeError("event hub not started")
        if not self._live.is_set():
            try:
                await asyncio.wait_for(self._live.wait(), timeout=_CONFIRM_WAIT_S)
            except TimeoutError:
                # The pub/sub connection is down (its listener is reconnecting).
                raise BrokerUnavailable() from None
        inbox: asyncio.Queue[Event] = asyncio.Queue()
        self._inboxes[channel] = inbox
        try:
            yield inbox
        finally:
            self._inboxes.pop(channel, None)
