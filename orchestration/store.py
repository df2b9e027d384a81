"""A DAG's state in Redis, and the atomic operations that keep retried steps harmless.

Keys (all under the service prefix, all expiring ``dag_ttl_s`` after their last write):

- ``<prefix>:dag:<id>`` hash: ``plan`` (msgpack Plan, fixed at start), ``status``
  (running | done | cancelled | failed), ``summary`` (msgpack Summary, once known),
  ``final`` (msgpack FinalAnswer, when done), ``error`` (why it failed or was cancelled).
- ``<prefix>:dag:<id>:out`` hash: step name -> msgpack StepOutput. HSETNX: a step's first
  output is the one the DAG uses, so a step that runs twice cannot change the past.
- ``<prefix>:dag:<id>:adv`` set: transitions taken. SADD returns 1 to exactly one caller,
  the one that queues what follows.
- ``<prefix>:dag:<id>:jobs`` hash: step name -> model of every queued step, for cancels.

The status leaves ``running`` at most once (WATCH/MULTI), and the events that announce a
final answer are published in the same transaction, so a client never gets two answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import WatchError

from orchestration.dag import FinalAnswer, Plan, StepOutput
from worker.keys import Keys
from worker.protocol import Event, Summary, encode_event

Status = Literal["running", "done", "cancelled", "failed"]
RUNNING = b"running"

_T = TypeVar("_T")


def _reply(call: object, kind: type[_T]) -> Awaitable[_T]:
    # redis-py types replies as "awaitable or value" (and as str); ours is async and gives bytes.
    return cast("Awaitable[_T]", call)


def _raw(call: object) -> Awaitable[bytes | None]:
    return cast("Awaitable[bytes | None]", call)


@dataclass(frozen=True, kw_only=True)
class DagView:
    """What a DAG's state says, for callers that were not there (a front, a test, an operator)."""

    status: str
    mode: str
    final: FinalAnswer | None
    summary: Summary | None
    error: str | None


class DagStore:
    def __init__(self, redis: Redis, *, keys: Keys, dag_id: str, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = max(int(ttl_s), 1)
        self.key = keys.dag(dag_id)
        self.outputs_key = keys.dag_outputs(dag_id)
        self.claims_key = keys.dag_claims(dag_id)
        self.jobs_key = keys.dag_jobs(dag_id)

    async def create(self, plan: Plan) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.key, "plan", msgspec.msgpack.encode(plan))  # type: ignore[arg-type]
            pipe.hsetnx(self.key, "status", RUNNING)  # type: ignore[arg-type]
            pipe.expire(self.key, self._ttl_s)
            created, *_ = await pipe.execute()
        if not created:
            raise RuntimeError(f"DAG {plan.dag_id} already exists")

    async def plan(self) -> Plan | None:
        raw = await _raw(self._redis.hget(self.key, "plan"))
        return None if raw is None else msgspec.msgpack.decode(raw, type=Plan)

    async def status(self) -> str | None:
        raw = await _raw(self._redis.hget(self.key, "status"))
        return None if raw is None else raw.decode()

    async def record(self, step: str, output: StepOutput) -> tuple[bool, dict[str, StepOutput]]:
        """Store a step's output unless it has one; returns (stored now, every output so far).

        Write and read are one transaction: of several parallel steps, exactly one sees
        the others' outputs after writing its own, so exactly one may go on to the join.
        """
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.outputs_key, step, msgspec.msgpack.encode(output))  # type: ignore[arg-type]
            pipe.hgetall(self.outputs_key)
            pipe.expire(self.outputs_key, self._ttl_s)
            stored, everything, _ = await pipe.execute()
        outputs = {
            bytes(name).decode(): msgspec.msgpack.decode(raw, type=StepOutput) for name, raw in everything.items()
        }
        return bool(stored), outputs

    async def has_output(self, step: str) -> bool:
        return await _reply(self._redis.hexists(self.outputs_key, step), bool)

    async def output(self, step: str) -> StepOutput | None:
        raw = await _raw(self._redis.hget(self.outputs_key, step))
        return None if raw is None else msgspec.msgpack.decode(raw, type=StepOutput)

    async def claim(self, transition: str) -> bool:
        """True for exactly one caller per transition."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self.claims_key, transition)
            pipe.expire(self.claims_key, self._ttl_s)
            added, _ = await pipe.execute()
        return bool(added)

    async def note_jobs(self, jobs: Iterable[tuple[str, str]]) -> None:
        mapping = {step: model for step, model in jobs}
        if not mapping:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.jobs_key, mapping=mapping)
            pipe.expire(self.jobs_key, self._ttl_s)
            await pipe.execute()

    async def jobs(self) -> dict[str, str]:
        raw = await _reply(self._redis.hgetall(self.jobs_key), dict)
        return {bytes(step).decode(): bytes(model).decode() for step, model in raw.items()}

    async def publish_summary(self, channel: str, summary: Summary) -> bool:
        """Store and publish the summary unless a DAG run did already (a DAG has one summary)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.key)
                    if await _reply(pipe.hexists(self.key, "summary"), bool):
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self.key, mapping={"summary": msgspec.msgpack.encode(summary)})
                    pipe.expire(self.key, self._ttl_s)
                    pipe.publish(channel, encode_event(summary))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def summary(self) -> Summary | None:
        raw = await _raw(self._redis.hget(self.key, "summary"))
        return None if raw is None else msgspec.msgpack.decode(raw, type=Summary)

    async def end(
        self,
        status: Status,
        *,
        final: FinalAnswer | None = None,
        summary: Summary | None = None,
        error: str | None = None,
        channel: str | None = None,
        events: Sequence[Event] = (),
    ) -> bool:
        """Leave ``running`` for ``status`` and publish ``events``; False if it had already ended."""
        fields: dict[str, bytes] = {"status": status.encode()}
        if final is not None:
            fields["final"] = msgspec.msgpack.encode(final)
        if summary is not None:
            fields["summary"] = msgspec.msgpack.encode(summary)
        if error is not None:
            fields["error"] = error.encode()
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.key)
                    if await _raw(pipe.hget(self.key, "status")) != RUNNING:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self.key, mapping=fields)
                    for key in (self.key, self.outputs_key, self.claims_key, self.jobs_key):
                        pipe.expire(key, self._ttl_s)
                    if channel is not None:
                        for event in events:
                            pipe.publish(channel, encode_event(event))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def view(self) -> DagView | None:
        raw = await _reply(self._redis.hgetall(self.key), dict)
        if b"plan" not in raw:
            return None
        plan = msgspec.msgpack.decode(raw[b"plan"], type=Plan)
        return DagView(
            status=bytes(raw.get(b"status", b"")).decode(),
            mode=plan.mode,
            final=msgspec.msgpack.decode(raw[b"final"], type=FinalAnswer) if b"final" in raw else None,
            summary=msgspec.msgpack.decode(raw[b"summary"], type=Summary) if b"summary" in raw else None,
            error=bytes(raw[b"error"]).decode() if b"error" in raw else None,
        )
