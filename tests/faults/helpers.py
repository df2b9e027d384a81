"""Shared steps of the fault tests: requests, waiting for a state, and what must be left over."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import redis

SMOL = "smollm2-135m"
# A slow null model (its timing is known) and a short heartbeat, so deaths show quickly.
SLOW = {"INFERENCE_BACKEND": "null", "INFERENCE_NULL_TOKEN_DELAY_MS": "100", "INFERENCE_HEARTBEAT_TTL_S": "2"}


def body(content: str, **extra: object) -> dict[str, object]:
    return {"model": SMOL, "messages": [{"role": "user", "content": content}], **extra}


def wait_for(check: Callable[[], object], *, timeout_s: float, what: str | Callable[[], object]) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, what() if callable(what) else what
        time.sleep(0.02)
    return time.monotonic() - started


def stream_events(response: httpx.Response) -> list[dict[str, object] | str]:
    """The SSE data payloads of a streamed answer, '[DONE]' included."""
    events: list[dict[str, object] | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def leftovers(client: redis.Redis, prefix: str, *, expiring_ok: bool = False) -> dict[str, list[str]]:
    """Keys that must not outlive the requests: running jobs, locks, slots, queued jobs, markers.

    With `expiring_ok`, a final event kept for a front that had already given up (it could
    not delete it while Redis was down) is fine as long as it expires by itself.
    """
    found: dict[str, list[str]] = {}
    patterns = {
        "running": f"{prefix}:running:*",
        "in-progress": f"arq:in-progress:{prefix}:*",
        "jobs": f"arq:job:{prefix}:*",
        "sent": f"{prefix}:sent:*",
        "done": f"{prefix}:done:*",
    }
    for name, pattern in patterns.items():
        keys = [k.decode() for k in client.scan_iter(match=pattern)]
        if name == "running":
            keys = [k for k in keys if client.hlen(k)]
        if name == "done" and expiring_ok:
            keys = [k for k in keys if client.ttl(k) < 0]
        if keys:
            found[name] = keys
    for name, key in (("admitted", f"{prefix}:admitted"), ("queued", f"{prefix}:q:{SMOL}")):
        if client.zcard(key):
            found[name] = [m.decode() for m in client.zrange(key, 0, -1)]
    return found


def assert_nothing_left(client: redis.Redis, prefix: str, *, expiring_ok: bool = False, timeout_s: float = 5) -> None:
    """Waits (briefly: cleanup follows the response) until leftovers() finds nothing."""
    wait_for(
        lambda: not leftovers(client, prefix, expiring_ok=expiring_ok),
        timeout_s=timeout_s,
        what=lambda: leftovers(client, prefix, expiring_ok=expiring_ok),
    )


def running_worker_pid(client: redis.Redis, prefix: str) -> int:
    """The pid of the worker that runs the one job of SMOL now."""
    entries = client.hgetall(f"{prefix}:running:{SMOL}")
    assert len(entries) == 1, entries
    worker_id = next(iter(entries.values())).decode()
    return int(client.hget(f"{prefix}:worker:{SMOL}:{worker_id}", "pid") or 0)


def worker_ready(client: redis.Redis, prefix: str) -> bool:
    """A worker of `prefix` registered as ready or busy; False while Redis does not answer."""
    try:
        return any(client.hget(k, "state") in (b"ready", b"busy") for k in client.scan_iter(f"{prefix}:worker:*"))
    except redis.RedisError:
        return False
    finally:
        client.close()
