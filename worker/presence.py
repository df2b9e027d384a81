"""Workers announce themselves in Redis so fronts know which models are served.

Each worker keeps a hash (`<prefix>:worker:<model>:<id>`) with a TTL and an entry in the
`<prefix>:workers` sorted set scored by when that TTL runs out. A heartbeat renews both;
a worker that dies simply stops renewing, and readers ignore entries past their score.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker.keys import Keys

logger = logging.getLogger(__name__)

# Adds commands to the heartbeat's pipeline; returns what to call if that pipeline fails.
BeatWriter = Callable[[Any], Callable[[], None]]


@dataclass(frozen=True, kw_only=True)
class WorkerInfo:
    model: str
    worker_id: str
    state: str
    host: str
    pid: int
    backend: str
    context_length: int
    running: int
    jobs_done: int
    started_ms: int

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes]) -> WorkerInfo:
        """Raises KeyError or ValueError (UnicodeDecodeError included) for a record that does not decode."""
        field = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            model=field["model"],
            worker_id=field["worker_id"],
            state=field.get("state", "unknown"),
            host=field.get("host", ""),
            pid=int(field.get("pid", "0")),
            backend=field.get("backend", ""),
            context_length=int(field.get("context_length", "0")),
            running=int(field.get("running", "0")),
            jobs_done=int(field.get("jobs_done", "0")),
            started_ms=int(field.get("started_ms", "0")),
        )


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Presence:
    """One worker's entry in the registry, renewed by a background heartbeat."""

    def __init__(
        self,
        redis: Redis,
        *,
        keys: Keys,
        model: str,
        worker_id: str,
        ttl_s: float,
        also_write: BeatWriter | None = None,
    ) -> None:
        self._redis = redis
        # The worker's metrics ride on the heartbeat: no round trip of their own.
        self._also_write = also_write
        self._keys = keys
        self._model = model
        self._worker_id = worker_id
        self._ttl_ms = int(ttl_s * 1000)
        self._fields: dict[str, str | int] = {
            "model": model,
            "worker_id": worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_ms": int(time.time() * 1000),
            "state": "loading",
            "running": 0,
            "jobs_done": 0,
        }
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return str(self._fields["state"])

    @property
    def member(self) -> str:
        return f"{self._model}/{self._worker_id}"

    async def update(self, **fields: str | int) -> None:
        self._fields.update(fields)
        await self._write()

    def note(self, **fields: str | int) -> None:
        """Change fields that the next heartbeat writes."""
        self._fields.update(fields)

    async def _write(self) -> None:
        key = self._keys.worker(self._model, self._worker_id)
        expires_ms = int(time.time() * 1000) + self._ttl_ms
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=self._fields)
            pipe.pexpire(key, self._ttl_ms)
            pipe.zadd(self._keys.workers, {self.member: expires_ms})
            # Entries of workers that died without leaving; any live worker sweeps them.
            pipe.zremrangebyscore(self._keys.workers, "-inf", expires_ms - 2 * self._ttl_ms)
            await self._execute(pipe)

    async def _execute(self, pipe: Any) -> None:
        restore = self._also_write(pipe) if self._also_write is not None else None
        try:
            await pipe.execute()
        except BaseException:
            if restore is not None:
                restore()
            raise

    async def start(self, **fields: str | int) -> None:
        await self.update(**fields)
        self._task = asyncio.create_task(self._beat(), name="heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            with contextlib.suppress(Exception):
                await self._write()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._keys.worker(self._model, self._worker_id))
            pipe.zrem(self._keys.workers, self.member)
            await self._execute(pipe)


# Live workers' hashes, and which of the given loading markers are set, in one round trip.
_FLEET = """
local found = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local model, worker = string.match(member, '^(.-)/(.*)$')
  if model then
    local fields = redis.call('HGETALL', ARGV[2] .. model .. ':' .. worker)
    if #fields > 0 then
      table.insert(found, fields)
    end
  end
end
local markers = {}
for index = 2, #KEYS do
  markers[index - 1] = redis.call('EXISTS', KEYS[index])
end
return {found, markers}
"""


class FleetReader:
    """Reads the live workers on one Redis connection; its Lua script is registered once, here."""

    def __init__(self, redis: Redis, *, keys: Keys) -> None:
        self._keys = keys
        self._script = redis.register_script(_FLEET)

    async def read(self, *, loading_keys: Sequence[str] = ()) -> tuple[list[WorkerInfo], list[bool]]:
        """Every worker whose heartbeat is current, and which `loading_keys` exist."""
        keys = self._keys
        now_ms = int(time.time() * 1000)
        found, markers = await self._script(keys=[keys.workers, *loading_keys], args=[now_ms, keys.worker("", "")[:-1]])
        return _decode_workers(found), [bool(flag) for flag in markers]


def _decode_workers(found: Sequence[Sequence[bytes]]) -> list[WorkerInfo]:
    workers = []
    for fields in found:
        try:
            workers.append(WorkerInfo.from_hash(dict(zip(fields[::2], fields[1::2], strict=True))))
        except (KeyError, ValueError) as exc:
            # One bad record (another version's, or written by hand) must not hide the others
            # or fail every route that looks at the fleet.
            logger.warning("skipping a worker record that does not decode (%r): %s", exc, _sample(fields))
    return workers


def _sample(fields: Sequence[bytes]) -> str:
    return repr(list(fields)[:20])[:500]
