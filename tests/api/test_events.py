"""The front's event hub on the real Redis: one pattern subscription hears every request it made."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from api.events import EventHub
from worker.keys import Keys
from worker.protocol import Event, Finished, Token, encode_event

pytestmark = pytest.mark.redis


@pytest.fixture
async def hubs(redis: Redis, prefix: str) -> AsyncIterator[tuple[EventHub, EventHub]]:
    """Two fronts' hubs on one Redis and one key prefix."""
    pair = (EventHub(redis, keys=Keys(prefix=prefix)), EventHub(redis, keys=Keys(prefix=prefix)))
    for hub in pair:
        await hub.start()
    yield pair
    for hub in pair:
        await hub.stop()


async def next_of(inbox: asyncio.Queue[Event]) -> Event:
    return await asyncio.wait_for(inbox.get(), 2)


async def test_each_request_hears_its_own_channel_and_no_other(
    redis: Redis, prefix: str, hubs: tuple[EventHub, EventHub]
) -> None:
    keys = Keys(prefix=prefix)
    mine, theirs = hubs
    first, second, elsewhere = mine.new_request_id(), mine.new_request_id(), theirs.new_request_id()
    assert len({first, second, elsewhere}) == 3
    assert all(r.startswith("chatcmpl-") and len(r) == len("chatcmpl-") + 32 for r in (first, second, elsewhere))
    async with (
        mine.subscription(keys.events(first)) as inbox_a,
        mine.subscription(keys.events(second)) as inbox_b,
        theirs.subscription(keys.events(elsewhere)) as inbox_c,
    ):
        # The pattern is subscribed once, at start-up: each publish reaches exactly one front.
        assert await redis.publish(keys.events(first), encode_event(Token("a"))) == 1
        assert await redis.publish(keys.events(elsewhere), encode_event(Token("c"))) == 1
        await redis.publish(keys.events(second), encode_event(Token("b")))
        await redis.publish(
            keys.events(first), encode_event(Finished(reason="stop", model="m", prompt_tokens=1, completion_tokens=1))
        )
        assert await next_of(inbox_a) == Token("a")
        assert isinstance(await next_of(inbox_a), Finished)
        assert await next_of(inbox_b) == Token("b")
        assert await next_of(inbox_c) == Token("c")
        assert inbox_a.empty() and inbox_b.empty() and inbox_c.empty()


async def test_events_of_a_request_no_longer_followed_are_dropped(
    redis: Redis, prefix: str, hubs: tuple[EventHub, EventHub]
) -> None:
    keys = Keys(prefix=prefix)
    hub = hubs[0]
    gone, kept = hub.new_request_id(), hub.new_request_id()
    async with hub.subscription(keys.events(kept)) as inbox:
        async with hub.subscription(keys.events(gone)) as dropped:
            pass
        await redis.publish(keys.events(gone), encode_event(Token("late")))
        await redis.publish(keys.events(kept), encode_event(Token("on time")))
        assert await next_of(inbox) == Token("on time")
        assert dropped.empty()
