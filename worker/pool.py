"""The worker's Redis pool: arq's, made to wake at once when a job is queued or a slot frees.

arq polls its queue every `poll_delay`; at its default of 0.5 s that would add about
250 ms to every first token. Our pool answers arq's queue read like Redis would, except
that an empty read waits on the model's wake channel (bounded by `idle_wait_s`, the slow
fallback poll) and reads again as soon as a front announces a job.

A full worker would otherwise wake every `poll_delay` to find itself still full: 200 times
a second at 5 ms, each wake-up taking a core from the model's threads mid-decode. So arq is
given one job more than the worker's capacity (`ARQ_HEADROOM`), and the queue read itself
waits while the worker's own jobs fill its capacity, until one of them ends. The count of
jobs is arq's own: its tasks running `Worker.run_job`, from the claim to the last write.

A job stays in the queue while it runs (arq removes it at the end), so the read skips jobs
another worker holds (arq's in-progress key) and returns at most the free slots: a worker
never spends a claim on a running job, and an idle worker beside busy ones waits for a wake
instead of re-reading the same running jobs every `poll_delay`. The read also claims the jobs
it returns, in the same script (worker.arq_claims), which spares arq's own claim its round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from redis.asyncio import ConnectionPool

from worker.arq_claims import ClaimingPipeline, Claims
from worker.listener import Listener

logger = logging.getLogger(__name__)

# arq's max_jobs is the capacity plus this, so that a full worker still reads (and waits) here.
ARQ_HEADROOM = 1
# The coroutine arq runs each job in (arq 0.28); its tasks are the jobs this worker holds.
_ARQ_JOB_COROUTINE = "Worker.run_job"

# Read by the queue read when the worker has no capacity of its own: arq's read limit rules.
_ANY_ROOM = 1 << 30


def arq_jobs_running() -> list[asyncio.Task[object]]:
    """arq's job tasks on this loop that have not finished."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == _ARQ_JOB_COROUTINE
    ]


class WakeablePool(ArqRedis):
    def __init__(
        self,
        pool: ConnectionPool,
        *,
        queue_name: str,
        wake_channel: str,
        idle_wait_s: float,
        in_progress_ms: int,
        capacity: int | None = None,
        stopping: Callable[[], bool] = lambda: False,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool, default_queue_name=queue_name, **kwargs)
        self._queue_name = queue_name
        self._wake_channel = wake_channel
        self._idle_wait_s = idle_wait_s
        self._woken = asyncio.Event()
        self._listener: Listener | None = None
        # Jobs the worker runs at once; None: arq's max_jobs alone limits them.
        self._capacity = capacity
        # True once the worker was told to stop (an unload): a slot that frees takes no new job.
        self.stopping = stopping
        self._room = asyncio.Event()
        self._watched: set[asyncio.Task[object]] = set()
        self._claims = Claims(self, queue_name=queue_name, in_progress_ms=in_progress_ms)

    async def start_wake_listener(self) -> None:
        pubsub = self.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._wake_channel)
        # While the connection is down the idle wait times out: the fallback poll.
        self._listener = Listener(pubsub, lambda _: self._woken.set(), name="wake listener", retry_s=self._idle_wait_s)
        self._listener.start()

    async def stop_wake_listener(self) -> None:
        if self._listener is not None:
            await self._listener.stop()

    async def give_back_claims(self) -> None:
        """Hand back jobs the read claimed that arq never ran (at shutdown)."""
        await self._claims.give_back_all()

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> ClaimingPipeline:
        return ClaimingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint, claims=self._claims
        )

    async def zrangebyscore(  # type: ignore[override]
        self, name: Any, min: Any, max: Any, start: int | None = None, num: int | None = None, **kwargs: Any
    ) -> Any:
        if name != self._queue_name or self._listener is None or kwargs:
            return await super().zrangebyscore(name, min, max, start=start, num=num, **kwargs)
        room = _ANY_ROOM if self._capacity is None else await self._wait_for_room(self._capacity)
        if room <= 0:
            return []
        self._woken.clear()
        found = await self._claimable(min, max, start=start, num=num, room=room)
        if found:
            return found
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), self._idle_wait_s)
        return await self._claimable(min, timestamp_ms(), start=start, num=num, room=room)

    async def _claimable(self, low: Any, high: Any, *, start: int | None, num: int | None, room: int) -> list[bytes]:
        count = -1 if num is None else num
        return await self._claims.take(_score(low), _score(high), start=start or 0, num=count, room=room)

    async def _wait_for_room(self, capacity: int) -> int:
        """Free slots, once there is one (or after `idle_wait_s`, 0 if there is none then)."""
        running = arq_jobs_running()
        if len(running) >= capacity:
            self._room.clear()
            for task in running:
                if task not in self._watched:
                    self._watched.add(task)
                    task.add_done_callback(self._slot_freed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), self._idle_wait_s)
            running = arq_jobs_running()
        if self.stopping():
            return 0
        return capacity - len(running)

    def _slot_freed(self, task: asyncio.Task[object]) -> None:
        self._watched.discard(task)
        self._room.set()


def _score(bound: Any) -> str:
    """A score bound as ZRANGEBYSCORE reads it: arq passes floats, -inf among them."""
    if isinstance(bound, float) and bound in (float("inf"), float("-inf")):
        return "+inf" if bound > 0 else "-inf"
    return str(bound)
