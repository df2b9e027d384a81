from __future__ import annotations

import time

import fakeredis
import pytest

from api.admission import Admission
from api.errors import Overloaded, RequestTimeout
from worker.keys import Keys


def admission(fake: fakeredis.FakeAsyncRedis, *, reject: bool) -> Admission:
    return Admission(fake, keys=Keys(prefix="x"), limit=2, reject_when_full=reject)


async def test_admits_up_to_the_limit_then_rejects_with_retry_after() -> None:
    fake = fakeredis.FakeAsyncRedis()
    gate = admission(fake, reject=True)
    far = int(time.time() * 1000) + 60_000
    await gate.acquire("a", deadline=time.monotonic() + 5, deadline_ms=far)
    await gate.acquire("b", deadline=time.monotonic() + 5, deadline_ms=far)
    with pytest.raises(Overloaded) as refused:
        await gate.acquire("c", deadline=time.monotonic() + 5, deadline_ms=far)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    await gate.release("a")
    await gate.acquire("c", deadline=time.monotonic() + 5, deadline_ms=far)
    assert await gate.count() == 2


async def test_a_slot_past_its_deadline_and_grace_is_reclaimed() -> None:
    fake = fakeredis.FakeAsyncRedis()
    gate = admission(fake, reject=True)
    long_gone = int(time.time() * 1000) - 60_000
    await fake.zadd("x:admitted", {"dead-1": long_gone, "dead-2": long_gone})
    await gate.acquire("fresh", deadline=time.monotonic() + 5, deadline_ms=int(time.time() * 1000) + 60_000)
    assert await gate.count() == 1


async def test_waiting_admission_times_out_with_504() -> None:
    fake = fakeredis.FakeAsyncRedis()
    gate = admission(fake, reject=False)
    far = int(time.time() * 1000) + 60_000
    for name in ("a", "b"):
        await gate.acquire(name, deadline=time.monotonic() + 5, deadline_ms=far)
    with pytest.raises(RequestTimeout):
        await gate.acquire("c", deadline=time.monotonic() + 0.1, deadline_ms=far)
