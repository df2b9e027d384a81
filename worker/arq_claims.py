"""How a worker claims arq's jobs: in its queue read, one script for all the jobs it takes.

arq 0.28 claims a job in four round trips (WATCH its in-progress key, EXISTS, ZSCORE, then
MULTI/PSETEX/EXEC) and reads it in a fifth (GET the job, INCRBY its try count, EXPIRE).
The queue read (worker.pool) already picks jobs that are queued and free, so its script
claims and reads them there, as arq would have: the in-progress key with arq's timeout,
the try count incremented with arq's expiry. arq then runs its claim and read as always;
`ClaimingPipeline` answers those commands from the script's results without sending them.
Any other command, or one for a job the read did not claim, goes to Redis as before.

A job claimed but not started (arq stopped short of it, or the worker stopped) is given
back, its in-progress key deleted and its try undone, so that any worker takes it at
once rather than after arq's in-progress timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

# arq keeps a try count this long (arq.worker.Worker.run_job, 0.28).
ARQ_RETRY_EXPIRY_S = 88400
# arq's in-progress timeout is its longest job timeout plus this (arq.worker.Worker, 0.28).
ARQ_IN_PROGRESS_EXTRA_S = 10

# Queued jobs by score, skipping those a worker runs, claimed and read: at most ARGV[6] of them.
# Each claim is four entries: job id, score, the job's bytes (nil once expired), its try count.
_CLAIM = """
local queued = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', ARGV[3], ARGV[4])
local claimed = {}
local room = tonumber(ARGV[6])
for i = 1, #queued, 2 do
  if #claimed >= 4 * room then break end
  local id = queued[i]
  if redis.call('SET', ARGV[5] .. id, '1', 'PX', ARGV[9], 'NX') then
    local tries = redis.call('INCR', ARGV[8] .. id)
    redis.call('EXPIRE', ARGV[8] .. id, ARGV[10])
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = queued[i + 1]
    claimed[#claimed + 1] = redis.call('GET', ARGV[7] .. id)
    claimed[#claimed + 1] = tries
  end
end
return claimed
"""
# KEYS: pairs of a job's in-progress key and its try count key. A job still claimed loses both.
_GIVE_BACK = """
for i = 1, #KEYS, 2 do
  if redis.call('DEL', KEYS[i]) == 1 and redis.call('DECR', KEYS[i + 1]) <= 0 then
    redis.call('DEL', KEYS[i + 1])
  end
end
return 0
"""


@dataclass(frozen=True, kw_only=True)
class Claim:
    job_id: str
    score: float
    payload: bytes | None
    tries: int

    @property
    def in_progress_key(self) -> str:
        return in_progress_key_prefix + self.job_id

    @property
    def retry_key(self) -> str:
        return retry_key_prefix + self.job_id


class Claims:
    """The jobs this worker's read claimed: waiting for arq's claim, then for arq's read."""

    def __init__(self, redis: Redis, *, queue_name: str, in_progress_ms: int) -> None:
        self._queue_name = queue_name
        self._in_progress_ms = in_progress_ms
        self._claim = redis.register_script(_CLAIM)
        self._give_back = redis.register_script(_GIVE_BACK)
        self._waiting: dict[str, Claim] = {}
        self._started: dict[str, Claim] = {}

    async def take(self, low: str, high: str, *, start: int, num: int, room: int) -> list[bytes]:
        """Claim up to `room` queued jobs with scores from `low` to `high`; their ids, in order.

        Jobs the last read claimed and arq did not start are given back first, in a round trip
        of their own; that is rare, since arq starts a read's jobs before it reads again.
        """
        stale = list(self._waiting.values())
        self._waiting.clear()
        if stale:
            await self.give_back(stale)
        args: list[str | int] = [low, high, start, num, in_progress_key_prefix, room]
        args += [job_key_prefix, retry_key_prefix, self._in_progress_ms, ARQ_RETRY_EXPIRY_S]
        reply: list[Any] = await self._claim(keys=[self._queue_name], args=args)
        ids: list[bytes] = []
        for at in range(0, len(reply), 4):
            raw_id, score, payload, tries = reply[at : at + 4]
            claim = Claim(job_id=raw_id.decode(), score=float(score), payload=payload, tries=int(tries))
            self._waiting[claim.job_id] = claim
            ids.append(raw_id)
        return ids

    def waiting(self, in_progress_key: Any) -> Claim | None:
        """The claim arq is about to repeat, given the key it watches."""
        if not isinstance(in_progress_key, str) or not in_progress_key.startswith(in_progress_key_prefix):
            return None
        return self._waiting.pop(in_progress_key[len(in_progress_key_prefix) :], None)

    def started(self, claim: Claim) -> None:
        self._started[claim.job_id] = claim

    def read_for(self, job_key: Any) -> Claim | None:
        """The claim whose job arq reads, given the job's key."""
        if not isinstance(job_key, str) or not job_key.startswith(job_key_prefix):
            return None
        return self._started.pop(job_key[len(job_key_prefix) :], None)

    async def give_back(self, claims: list[Claim]) -> None:
        keys = [key for claim in claims for key in (claim.in_progress_key, claim.retry_key)]
        await self._give_back(keys=keys)

    async def give_back_all(self) -> None:
        """At shutdown: every job claimed and never run goes back to the queue's other workers."""
        left = [*self._waiting.values(), *self._started.values()]
        self._waiting.clear()
        self._started.clear()
        if left:
            await self.give_back(left)

    @property
    def in_progress_ms(self) -> int:
        return self._in_progress_ms

    @property
    def queue_name(self) -> str:
        return self._queue_name


class OutageSafePipeline(Pipeline):
    """A pipeline whose optimistic transaction fails where arq expects it to, not earlier.

    redis-py raises WatchError at the command that meets a lost connection while keys are
    watched. arq reads keys between WATCH and EXEC without guarding those reads, so a Redis
    restart at that moment would end the worker. Here the reads are retried on a new
    connection and the transaction is refused at EXEC instead, which arq treats as "another
    worker took the job": the job stays queued and the next poll takes it.
    """

    _lost_watch = False

    async def _disconnect_reset_raise(self, conn: Any, error: Exception) -> None:
        if self.watching:
            await conn.disconnect()
            self._lost_watch = True
            return
        await super()._disconnect_reset_raise(conn, error)  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True) -> Any:
        if self._lost_watch:
            await self.reset()
            raise WatchError("the connection was lost while keys were watched; nothing was run")
        return await super().execute(raise_on_error)

    async def reset(self) -> None:
        self._lost_watch = False
        await super().reset()  # type: ignore[no-untyped-call]


class ClaimingPipeline(OutageSafePipeline):
    """arq's pipeline, answering arq's claim and read of a job the queue read claimed."""

    def __init__(self, *args: Any, claims: Claims, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claims = claims
        # The job whose claim arq repeats in this pipeline (between its WATCH and EXEC).
        self._held: Claim | None = None

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        name = args[0]
        if name == "WATCH" and self._held is None and not self.watching and len(args) == 2:
            held = self._claims.waiting(args[1])
            if held is not None:
                # Nothing is watched in Redis: the script's claim already made the job ours.
                self._held = held
                self.watching = True
                return True
        held = self._held
        if held is not None:
            if name == "EXISTS" and args[1:] == (held.in_progress_key,):
                return 0
            if name == "ZSCORE" and args[1:] == (self._claims.queue_name, held.job_id):
                return held.score
            await self._let_go()
        return await super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True) -> Any:
        held = self._held
        if held is not None:
            if self.explicit_transaction and _commands(self.command_stack) == [("PSETEX", held.in_progress_key)]:
                timeout_ms = int(self.command_stack[0][0][2])
                await self.reset()
                self._claims.started(held)
                if timeout_ms != self._claims.in_progress_ms:
                    await self._send("PEXPIRE", held.in_progress_key, timeout_ms)
                return [True]
            await self._let_go()
        elif self.command_stack and not self.watching:
            reply = await self._read_reply()
            if reply is not None:
                return reply
        return await super().execute(raise_on_error)

    async def reset(self) -> None:
        self._held = None
        await super().reset()

    async def _read_reply(self) -> list[Any] | None:
        """arq's read of a job it just claimed (GET, INCRBY, EXPIRE), answered from the claim."""
        first = self.command_stack[0][0]
        claim = self._claims.read_for(first[1]) if first[0] == "GET" and len(first) == 2 else None
        if claim is None:
            return None
        expected = [("GET", first[1]), ("INCRBY", claim.retry_key), ("EXPIRE", claim.retry_key)]
        if _commands(self.command_stack) == expected:
            await self.reset()
            return [claim.payload, claim.tries, True]
        # Some other read: Redis answers it, once the script's try is undone.
        self.command_stack.insert(0, (("DECRBY", claim.retry_key, "1"), {}))
        replies: list[Any] = await super().execute()
        return replies[1:]

    async def _let_go(self) -> None:
        """arq sent something this pipeline does not answer: give the claim back, watch for real."""
        held = self._held
        assert held is not None
        self._held = None
        self.watching = False
        stack, transaction = self.command_stack, self.explicit_transaction
        self.command_stack, self.explicit_transaction = [], False
        await self._claims.give_back([held])
        await super().immediate_execute_command("WATCH", held.in_progress_key)  # type: ignore[no-untyped-call]
        self.command_stack, self.explicit_transaction = stack, transaction

    async def _send(self, *args: Any) -> Any:
        async with Redis(connection_pool=self.connection_pool) as redis:
            return await redis.execute_command(*args)  # type: ignore[no-untyped-call]


def _commands(stack: list[Any]) -> list[tuple[Any, ...]]:
    """A pipeline's queued commands as (name, first key)."""
    return [tuple(args[:2]) for args, _ in stack]
