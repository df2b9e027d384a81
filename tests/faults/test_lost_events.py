"""Events lost between worker and front, deadlines, and disconnects: never a wait for the deadline.

A test plays the worker by hand on the real Redis, so it can drop exactly the events it wants.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import redis

from tests.conftest import StartFront, StartWorker
from tests.faults.helpers import SLOW, SMOL, assert_nothing_left, body, leftovers, stream_events, wait_for
from worker.protocol import Accepted, Event, Finished, Token, encode_event

pytestmark = pytest.mark.redis


class HandWorker:
    """Registers as a worker of SMOL and takes the next job off its queue by hand."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        now_ms = int(time.time() * 1000)
        self.key = f"{prefix}:worker:{SMOL}:hand"
        client.hset(
            self.key,
            mapping={
                "model": SMOL,
                "worker_id": "hand",
                "state": "ready",
                "host": "h",
                "pid": 1,
                "backend": "null",
                "context_length": 2048,
                "running": 0,
                "jobs_done": 0,
                "started_ms": now_ms,
            },
        )
        client.zadd(f"{prefix}:workers", {f"{SMOL}/hand": now_ms + 600_000})

    def take(self) -> str:
        queue = f"{self.prefix}:q:{SMOL}"
        wait_for(lambda: self.client.zcard(queue), timeout_s=10, what="no job queued")
        job_id = self.client.zrange(queue, 0, 0)[0].decode()
        request_id = job_id.removeprefix(f"{self.prefix}:")
        self.client.hset(f"{self.prefix}:running:{SMOL}", request_id, "hand")
        return request_id

    def publish(self, request_id: str, *events: Event) -> None:
        for event in events:
            self.client.publish(f"{self.prefix}:ev:{request_id}", encode_event(event))

    def finish(self, request_id: str) -> None:
        """What arq and the runtime do at a job's end: no running entry, nothing queued."""
        self.client.hdel(f"{self.prefix}:running:{SMOL}", request_id)
        self.client.zrem(f"{self.prefix}:q:{SMOL}", f"{self.prefix}:{request_id}")
        self.client.delete(f"arq:job:{self.prefix}:{request_id}")


class Asked:
    """A plain request in flight from a thread, whose job the HandWorker has taken."""

    def __init__(self, url: str) -> None:
        self._outcome: dict[str, httpx.Response] = {}
        self._started = time.monotonic()
        self.took_s = 0.0
        self._thread = threading.Thread(target=self._run, args=(url,))
        self._thread.start()

    def _run(self, url: str) -> None:
        self._outcome["response"] = httpx.post(f"{url}/v1/chat/completions", json=body("hi"), timeout=60)
        self.took_s = time.monotonic() - self._started

    def response(self) -> httpx.Response:
        self._thread.join(timeout=30)
        return self._outcome["response"]


def _asked(start_front: StartFront, client: redis.Redis, prefix: str) -> tuple[HandWorker, str, Asked]:
    worker = HandWorker(client, prefix)
    asked = Asked(start_front())
    return worker, worker.take(), asked


def _accepted() -> Accepted:
    return Accepted(model=SMOL, worker_id="hand", prompt_tokens=3)


def test_a_gap_in_the_tokens_ends_the_request_with_a_clear_error(
    start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    worker, request_id, asked = _asked(start_front, redis_client, prefix)
    time.sleep(0.2)
    finished = Finished(reason="stop", model=SMOL, prompt_tokens=3, completion_tokens=3, tokens_sent=3)
    worker.publish(request_id, _accepted(), Token("a", 1), Token("c", 3), finished)
    worker.finish(request_id)
    response = asked.response()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "events_lost"
    assert not leftovers(redis_client, prefix)


def test_a_lost_final_event_is_recovered_from_redis(
    start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    worker, request_id, asked = _asked(start_front, redis_client, prefix)
    time.sleep(0.2)
    worker.publish(request_id, _accepted(), Token("fine", 1))
    finished = Finished(reason="stop", model=SMOL, prompt_tokens=3, completion_tokens=1, tokens_sent=1)
    # The worker kept its final event; the publish itself never reached the front.
    redis_client.set(f"{prefix}:done:{request_id}", encode_event(finished), ex=60)
    worker.finish(request_id)
    response = asked.response()
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "fine"
    assert asked.took_s < 10, asked.took_s  # the deadline is 120 s
    assert not leftovers(redis_client, prefix)


def test_a_job_that_vanished_ends_the_request_instead_of_waiting(
    start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    worker, request_id, asked = _asked(start_front, redis_client, prefix)
    worker.publish(request_id, _accepted())
    worker.finish(request_id)
    response = asked.response()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "events_lost"
    assert not leftovers(redis_client, prefix)


def test_the_worker_deadline_is_a_504_or_a_final_error_never_stop(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, **SLOW, INFERENCE_REQUEST_TIMEOUT="2")
    url = start_front(INFERENCE_REQUEST_TIMEOUT="2")
    plain = httpx.post(f"{url}/v1/chat/completions", json=body("slow", max_tokens=500), timeout=30)
    assert plain.status_code == 504, plain.text
    assert plain.json()["error"]["code"] == "timeout"
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body("slow", max_tokens=500, stream=True), timeout=30
    ) as response:
        events = stream_events(response)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert isinstance(last, dict) and last["error"]["code"] == "timeout", last  # type: ignore[index]
    assert not any(
        isinstance(e, dict) and any(c.get("finish_reason") for c in e.get("choices", []))
        for e in events  # type: ignore[attr-defined]
    )
    assert_nothing_left(redis_client, prefix)


def test_a_dropped_stream_frees_its_slot_and_running_entry_within_a_second(
    start_worker: StartWorker, start_front: StartFront, redis_client: redis.Redis, prefix: str
) -> None:
    start_worker(SMOL, **SLOW)
    url = start_front()
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body("a b c", max_tokens=500, stream=True), timeout=30
    ) as response:
        for line in response.iter_lines():
            if '"content":"a"' in line:
                break
    dropped = time.monotonic()
    freed_s = wait_for(
        lambda: not redis_client.zcard(f"{prefix}:admitted") and not redis_client.hlen(f"{prefix}:running:{SMOL}"),
        timeout_s=10,
        what="slot or running entry kept after the client left",
    )
    print(f"slot and running entry freed {freed_s:.2f}s after the disconnect")
    assert time.monotonic() - dropped < 3
    assert_nothing_left(redis_client, prefix)
