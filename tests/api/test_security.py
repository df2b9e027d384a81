from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from api.security import ApiKeyAuth, BodyLimit, bearer_token, key_matches
from presets.settings import Settings
from tests.support import TEST_REDIS_URL, in_process_front


class Echo:
    """An app that answers 200 with the body it was given, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front")  # type: ignore[arg-type]


def test_bearer_token_takes_only_the_bearer_scheme() -> None:
    assert bearer_token([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer_token([(b"Authorization", b"bearer  abc ")]) == b"abc"
    assert bearer_token([(b"authorization", b"Basic abc")]) is None
    assert bearer_token([(b"authorization", b"Bearer")]) is None
    assert bearer_token([(b"x-other", b"Bearer abc")]) is None


def test_any_of_the_rotated_keys_matches_and_nothing_else() -> None:
    keys = [b"old-key", b"new-key"]
    assert key_matches(b"old-key", keys) and key_matches(b"new-key", keys)
    assert not key_matches(b"new-ke", keys)
    assert not key_matches(b"", keys)
    assert not key_matches(b"\xff\xfe", keys)


async def test_a_request_without_a_valid_key_is_a_401_and_never_reaches_the_app() -> None:
    inner = Echo()
    async with client_for(ApiKeyAuth(inner, keys=["old-key", "new-key"])) as client:
        missing = await client.post("/v1/chat/completions", content=b"{}")
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        # Not ASCII: compare_digest would raise on str; the check works on bytes.
        odd = await client.get("/v1/queue", headers={"Authorization": "Bearer \xe9t\xe9".encode("latin-1")})
        basic = await client.get("/v1/models", headers={"Authorization": "Basic b2xkLWtleQ=="})
    for answer in (missing, wrong, odd, basic):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        error = answer.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert "nope" not in error["message"]
    assert "didn't provide" in missing.json()["error"]["message"]
    assert inner.calls == 0


async def test_either_rotated_key_passes_and_the_health_probes_need_none() -> None:
    inner = Echo()
    async with client_for(ApiKeyAuth(inner, keys=["old-key", "new-key"])) as client:
        statuses = [
            (await client.get("/v1/models", headers={"Authorization": "Bearer old-key"})).status_code,
            (await client.get("/v1/models", headers={"Authorization": "Bearer new-key"})).status_code,
            (await client.get("/health")).status_code,
            (await client.get("/health/ready")).status_code,
        ]
        beside_health = await client.get("/health/other")
    assert statuses == [200, 200, 200, 200]
    assert beside_health.status_code == 401


async def test_a_declared_length_over_the_limit_is_a_413_before_any_body_is_read() -> None:
    inner = Echo()
    async with client_for(BodyLimit(inner, max_body_bytes=1024, read_timeout_s=5)) as client:
        answer = await client.post("/v1/chat/completions", content=b"x" * 1025)
        fits = await client.post("/v1/chat/completions", content=b"x" * 1024)
    assert answer.status_code == 413
    assert answer.json()["error"]["code"] == "request_too_large"
    assert "1024 bytes" in answer.json()["error"]["message"]
    assert answer.headers["connection"] == "close"
    assert fits.status_code == 200 and fits.content == b"x" * 1024
    assert inner.calls == 1


async def test_a_streamed_body_is_counted_as_it_arrives_and_cut_off_at_the_limit() -> None:
    inner = Echo()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 400

    async with client_for(BodyLimit(inner, max_body_bytes=1024, read_timeout_s=5)) as client:
        answer = await client.post("/v1/chat/completions", content=chunks())
    assert answer.status_code == 413
    assert inner.calls == 0


async def test_a_body_in_several_parts_within_the_limit_reaches_the_app_whole() -> None:
    inner = Echo()

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b"ef"):
            yield part

    async with client_for(BodyLimit(inner, max_body_bytes=1024, read_timeout_s=5)) as client:
        answer = await client.post("/v1/chat/completions", content=chunks())
    assert answer.status_code == 200 and answer.content == b"abcdef"


async def run_asgi(app: object, messages: list[Message], *, then_wait: bool) -> list[Message]:
    """Drive an ASGI app with these request messages; afterwards receive blocks (a silent client) or disconnects."""
    pending = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then_wait:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    await app(scope, receive, send)  # type: ignore[operator]
    return sent


async def test_a_body_that_stops_arriving_is_a_408() -> None:
    inner = Echo()
    guard = BodyLimit(inner, max_body_bytes=1024, read_timeout_s=0.05)
    sent = await run_asgi(guard, [{"type": "http.request", "body": b"{", "more_body": True}], then_wait=True)
    assert sent[0]["status"] == 408
    assert b"request_timeout" in sent[1]["body"]
    assert inner.calls == 0


async def test_a_client_that_leaves_mid_body_gets_no_answer_and_the_app_no_call() -> None:
    inner = Echo()
    guard = BodyLimit(inner, max_body_bytes=1024, read_timeout_s=5)
    sent = await run_asgi(guard, [{"type": "http.request", "body": b"{", "more_body": True}], then_wait=False)
    assert sent == [] and inner.calls == 0


def front_settings(prefix: str, **overrides: object) -> Settings:
    # Explicit, so an INFERENCE_API_KEY in the shell does not change what is tested.
    fields: dict[str, object] = {"redis_url": TEST_REDIS_URL, "key_prefix": prefix, "api_key": [], **overrides}
    return Settings(**fields)  # type: ignore[arg-type]


@pytest.mark.redis
async def test_the_front_checks_the_key_on_every_route_but_health(prefix: str) -> None:
    async with in_process_front(front_settings(prefix, api_key="old-key, new-key")) as client:
        refused = [
            await client.get("/v1/models"),
            await client.get("/v1/queue"),
            await client.post("/v1/models/smollm2-135m/unload"),
            await client.post("/v1/chat/completions", json={"model": "x", "messages": []}),
            await client.get("/openapi.json"),
        ]
        health = await client.get("/health")
        allowed = await client.get("/v1/models", headers={"Authorization": "Bearer new-key"})
    assert [r.status_code for r in refused] == [401] * 5
    assert all(r.json()["error"]["code"] == "invalid_api_key" for r in refused)
    assert health.status_code == 200
    assert allowed.status_code == 200 and allowed.json()["object"] == "list"


@pytest.mark.redis
async def test_the_front_refuses_an_oversized_body_and_out_of_range_integers(prefix: str) -> None:
    async with in_process_front(front_settings(prefix, max_body_bytes=4096)) as client:
        too_long = [{"role": "user", "content": "x" * 5000}]
        big = await client.post("/v1/chat/completions", json={"model": "smollm2-135m", "messages": too_long})
        seed = await client.post(
            "/v1/chat/completions",
            json={"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}], "seed": 2**70},
        )
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert seed.status_code == 400
    assert seed.json()["error"]["param"] == "seed"


@pytest.mark.redis
async def test_an_open_front_warns_once_at_start_up(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.security"):
        async with in_process_front(front_settings(prefix)) as client:
            answer = await client.get("/v1/models")
    assert answer.status_code == 200
    warnings = [r for r in caplog.records if r.name == "api.security"]
    assert len(warnings) == 1 and "INFERENCE_API_KEY is not set" in warnings[0].getMessage()


@pytest.mark.redis
async def test_a_front_with_a_key_does_not_warn(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.security"):
        async with in_process_front(front_settings(prefix, api_key="k")):
            pass
    assert not [r for r in caplog.records if r.name == "api.security"]
