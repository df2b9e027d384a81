"""The outbox: the writes of one loop iteration go out in one round trip, each writer's in order;
the handoff: one loop wake-up for every item an engine thread hands over meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError

from worker.outbox import Delivery, Handoff, Outbox

TTL_S = 300


class CountingRedis:
    """A fakeredis client that counts round trips: pipeline executions and lone PUBLISHes."""

    def __init__(self, redis: Any, *, fail: Exception | None = None) -> None:
        self.redis = redis
        self.fail = fail
        self.executes = 0
        self.publishes = 0
        # What happened, in order, for tests that compare it with the loop's other callbacks.
        self.log: list[str] = []

    def pipeline(self, *, transaction: bool) -> Any:
        pipe = self.redis.pipeline(transaction=transaction)
        execute = pipe.execute

        async def counted() -> list[Any]:
            self.executes += 1
            if self.fail is not None:
                raise self.fail
            result: list[Any] = await execute()
            return result

        pipe.execute = counted
        return pipe

    async def publish(self, channel: str, message: bytes) -> int:
        self.publishes += 1
        self.log.append("publish")
        if self.fail is not None:
            raise self.fail
        count: int = await self.redis.publish(channel, message)
        return count


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    redis = fakeredis.FakeAsyncRedis()
    yield redis
    await redis.aclose()


def outbox_on(counting: CountingRedis) -> Outbox:
    return Outbox(cast(Redis, counting), keep_ttl_s=TTL_S)


async def received(pubsub: Any, count: int) -> list[tuple[str, bytes]]:
    """The next `count` published messages, in the order the subscriber got them."""

    async def read() -> list[tuple[str, bytes]]:
        found: list[tuple[str, bytes]] = []
        async for message in pubsub.listen():
            if message["type"] == "message":
                found.append((message["channel"].decode(), message["data"]))
                if len(found) == count:
                    break
        return found

    # A guard against a hang when messages are missing, not a measurement.
    return await asyncio.wait_for(read(), 30)


async def test_writes_of_one_iteration_go_out_in_one_pipeline(server: Any) -> None:
    counting = CountingRedis(server)
    outbox = outbox_on(counting)
    pubsub = server.pubsub()
    await pubsub.subscribe(*(f"job{i}" for i in range(4)))
    deliveries = [Delivery(channel=f"job{i}", messages=[f"{i}.1".encode(), f"{i}.2".encode()]) for i in range(4)]
    await asyncio.gather(*(outbox.send(d) for d in deliveries))
    assert (counting.executes, counting.publishes) == (1, 0)
    messages = await received(pubsub, 8)
    for i in range(4):
        assert [data for channel, data in messages if channel == f"job{i}"] == [f"{i}.1".encode(), f"{i}.2".encode()]
    await pubsub.aclose()


async def test_a_writer_that_writes_again_keeps_its_order_across_flushes(server: Any) -> None:
    counting = CountingRedis(server)
    outbox = outbox_on(counting)
    pubsub = server.pubsub()
    await pubsub.subscribe("a", "b")

    async def writer(channel: str) -> None:
        for n in range(3):
            await outbox.send(Delivery(channel=channel, messages=[f"{channel}{n}".encode()]))

    await asyncio.gather(writer("a"), writer("b"))
    # Both writers write once per iteration: three flushes of two writes each.
    assert counting.executes == 3
    messages = await received(pubsub, 6)
    assert [data for channel, data in messages if channel == "a"] == [b"a0", b"a1", b"a2"]
    assert [data for channel, data in messages if channel == "b"] == [b"b0", b"b1", b"b2"]
    await pubsub.aclose()


async def test_a_lone_message_is_a_plain_publish_and_kept_keys_expire(server: Any) -> None:
    counting = CountingRedis(server)
    outbox = outbox_on(counting)
    await outbox.send(Delivery(channel="solo", messages=[b"x"]))
    assert (counting.executes, counting.publishes) == (0, 1)
    await outbox.send(Delivery(channel="solo", messages=[b"last"], keep=[("sent", b"1"), ("done", b"last")]))
    assert counting.executes == 1
    assert await server.get("done") == b"last"
    assert 0 < await server.ttl("sent") <= TTL_S


async def test_a_lone_writer_writes_at_once_and_otherwise_joins_the_iterations_batch(server: Any) -> None:
    counting = CountingRedis(server)
    outbox = outbox_on(counting)
    pubsub = server.pubsub()
    await pubsub.subscribe("a", "b")
    # Sent at once: before the loop runs a callback that was already due.
    asyncio.get_running_loop().call_soon(counting.log.append, "other")
    await outbox.send(Delivery(channel="a", messages=[b"a0"]), alone=True)
    assert counting.log == ["publish", "other"]
    # With another write already waiting for the flush, `alone` must not overtake it.
    first = asyncio.ensure_future(outbox.send(Delivery(channel="b", messages=[b"b0"])))
    await asyncio.sleep(0)
    await outbox.send(Delivery(channel="a", messages=[b"a1"]), alone=True)
    await first
    assert (counting.executes, counting.publishes) == (1, 1)
    assert await received(pubsub, 3) == [("a", b"a0"), ("b", b"b0"), ("a", b"a1")]
    await pubsub.aclose()


async def test_a_failed_round_trip_fails_every_writer_of_it(server: Any) -> None:
    counting = CountingRedis(server, fail=ConnectionError("redis went away"))
    outbox = outbox_on(counting)
    results = await asyncio.gather(
        *(outbox.send(Delivery(channel=f"job{i}", messages=[b"t"])) for i in range(3)), return_exceptions=True
    )
    assert counting.executes == 1
    assert all(isinstance(result, ConnectionError) for result in results)


class RecordingLoop:
    """Stands in for the event loop: keeps what a thread asked it to run, to run it later."""

    def __init__(self) -> None:
        self.rings: list[Callable[[], None]] = []

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self.rings.append(callback)


async def test_a_handoff_rings_once_for_all_items_waiting_and_keeps_their_order() -> None:
    loop = RecordingLoop()
    handoff = Handoff(cast(asyncio.AbstractEventLoop, loop))
    first: asyncio.Queue[object] = asyncio.Queue()
    second: asyncio.Queue[object] = asyncio.Queue()
    for item in ("a1", "a2", "a3"):
        handoff.put(first, item)
    handoff.put(second, "b1")
    assert len(loop.rings) == 1
    loop.rings[0]()
    assert [first.get_nowait() for _ in range(3)] == ["a1", "a2", "a3"]
    assert second.get_nowait() == "b1"
    # After a drain, the next item rings again.
    handoff.put(first, "a4")
    assert len(loop.rings) == 2


async def test_items_handed_over_while_holding_wake_the_loop_once_at_the_end() -> None:
    loop = RecordingLoop()
    handoff = Handoff(cast(asyncio.AbstractEventLoop, loop))
    queues: list[asyncio.Queue[object]] = [asyncio.Queue() for _ in range(4)]
    with handoff.holding():
        for i, queue in enumerate(queues):
            handoff.put(queue, f"token {i}")
        assert loop.rings == []
    assert len(loop.rings) == 1
    loop.rings[0]()
    assert [queue.get_nowait() for queue in queues] == [f"token {i}" for i in range(4)]
    # Holding with nothing handed over wakes nobody.
    with handoff.holding():
        pass
    assert len(loop.rings) == 1
