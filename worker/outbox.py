"""One decode step's events, for all of a worker's jobs: one loop wake-up, one Redis round trip.

A batching engine ends a decode step with a token for each of its running jobs, handed over
from its thread, and each job's coroutine publishes its own events. Done one by one, N jobs
cost N wake-ups of the event loop and N round trips per step. `Handoff` brings everything the
engine threads hand over before the loop gets to it in one wake-up, so the jobs it concerns
run in the same loop iteration; `Outbox` collects every write made within one iteration and
sends them in one non-transactional pipeline at the start of the next, then wakes each writer
with the result (or the error) of that pipeline.

A writer awaits its delivery before it writes again, so each job's events keep their order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """Messages for one channel, then keys to set (each with the outbox's expiry), in that order.

    `then` adds the writer's own commands after those, in the same round trip.
    """

    channel: str
    messages: Sequence[bytes]
    keep: Sequence[tuple[str, bytes]] = ()
    then: Callable[[Pipeline], None] | None = None


class Outbox:
    def __init__(self, redis: Redis, *, keep_ttl_s: int) -> None:
        self._redis = redis
        self._keep_ttl_s = keep_ttl_s
        self._pending: list[tuple[Delivery, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        # A flush runs as a task: held here so that it is not collected while it waits on Redis.
        self._flushing: set[asyncio.Task[None]] = set()

    async def send(self, delivery: Delivery, *, alone: bool = False) -> None:
        """Deliver with every other write of this loop iteration; raises what the pipeline raised.

        `alone`: the caller knows no other writer shares this iteration (one job runs), so the
        write goes out at once, without the hops through a scheduled flush and its task.
        """
        if alone and not self._pending:
            await self._execute([delivery])
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((delivery, done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            # call_soon runs after every callback already due in this iteration: the other
            # jobs woken by the same decode step add their writes before the flush takes them.
            loop.call_soon(self._flush)
        await done

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._flush_scheduled = False
        task = asyncio.get_running_loop().create_task(self._deliver(batch), name="outbox flush")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _deliver(self, batch: list[tuple[Delivery, asyncio.Future[None]]]) -> None:
        try:
            await self._execute([delivery for delivery, _ in batch])
        except asyncio.CancelledError:
            # The loop is shutting down: the writers must not wait forever.
            for _, done in batch:
                done.cancel()
            raise
        except Exception as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        for _, done in batch:
            # A writer cancelled meanwhile (its job was stopped) no longer waits.
            if not done.done():
                done.set_result(None)

    async def _execute(self, deliveries: list[Delivery]) -> None:
        lone = deliveries[0]
        if len(deliveries) == 1 and len(lone.messages) == 1 and not lone.keep and lone.then is None:
            # The common case of one stream: a plain PUBLISH costs less client CPU than a pipeline.
            await self._redis.publish(lone.channel, lone.messages[0])
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for delivery in deliveries:
                for message in delivery.messages:
                    pipe.publish(delivery.channel, message)
                for key, value in delivery.keep:
                    pipe.set(key, value, ex=self._keep_ttl_s)
                if delivery.then is not None:
                    delivery.then(pipe)
            await pipe.execute()


class Handoff:
    """Puts items from other threads on the loop's queues, with one wake-up for all that wait.

    `loop.call_soon_threadsafe` per item wakes the loop per item, and a loop woken by the
    first job's token takes the GIL and runs that job before the engine thread hands over the
    next job's. Here only the first item after a drain wakes the loop, and a thread inside
    `holding()` (a batching engine handing over one decode step's tokens) wakes it once, at
    the end: the drain then puts every item, and the jobs run in the same loop iteration.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[object], object]] = []
        # Whether a drain is on its way to the loop: no second wake-up before it has run.
        self._rung = False
        self._held = threading.local()

    def put(self, queue: asyncio.Queue[object], item: object) -> None:
        """Safe from any thread; items for one queue arrive in the order they were put."""
        with self._lock:
            self._pending.append((queue, item))
            ring = not self._rung and not getattr(self._held, "active", False)
            self._rung = self._rung or ring
        if ring:
            self.loop.call_soon_threadsafe(self._drain)

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Within it, this thread's items wake the loop once, when it ends."""
        self._held.active = True
        try:
            yield
        finally:
            self._held.active = False
            with self._lock:
                ring = bool(self._pending) and not self._rung
                self._rung = self._rung or ring
            if ring:
                self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
            self._rung = False
        for queue, item in batch:
            queue.put_nowait(item)
