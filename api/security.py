"""Who may call the front and how much a request may send: the API key and the body limits.

Both are pure ASGI middleware: they work on the headers and the raw body before FastAPI
parses anything, so a caller without a key cannot make the front buffer a body, and an
oversized or trickling body is refused while it arrives rather than after it was read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterable, Sequence

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BodyReadTimeout, InvalidApiKey, PayloadTooLarge, error_response
from presets.settings import Settings

logger = logging.getLogger(__name__)

# Liveness and readiness probes come from orchestrators and load balancers that hold no key.
OPEN_PATHS = frozenset({"/health", "/health/ready"})


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header; None when there is none."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            token = token.strip()
            return token if scheme.lower() == b"bearer" and token else None
    return None


def key_matches(token: bytes, keys: Sequence[bytes]) -> bool:
    # Every key is compared, each in constant time, so the answer's timing tells nothing of
    # which key came close or how many there are ahead of the match.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


class ApiKeyAuth:
    """401 `invalid_api_key` for any request but the health probes without a valid key."""

    def __init__(self, app: ASGIApp, *, keys: Sequence[str]) -> None:
        self._app = app
        # Bytes, because headers are bytes and compare_digest refuses non-ASCII str.
        self._keys = [key.encode() for key in keys if key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self._app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        if token is None:
            error = InvalidApiKey("You didn't provide an API key: send it as `Authorization: Bearer <key>`.")
        elif not key_matches(token, self._keys):
            error = InvalidApiKey("Incorrect API key provided.")
        else:
            await self._app(scope, receive, send)
            return
        await error_response(error)(scope, receive, send)


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


def declared_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                # The HTTP server rejects a malformed length; counting the body covers the rest.
                return None
    return None


class BodyLimit:
    """413 for a body over `max_body_bytes`, 408 for one not in within `read_timeout_s`.

    The body is read here, up to the limit, and handed to the app in one piece; later
    receive calls (the app's checks for a client that went away) go to the server as before.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, read_timeout_s: float) -> None:
        self._app = app
        self._max_body_bytes = max_body_bytes
        self._read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        length = declared_length(scope["headers"])
        if length is not None and length > self._max_body_bytes:
            await error_response(PayloadTooLarge(limit_bytes=self._max_body_bytes))(scope, receive, send)
            return
        try:
            body = await asyncio.wait_for(self._read(receive), self._read_timeout_s)
        except _TooLarge:
            await error_response(PayloadTooLarge(limit_bytes=self._max_body_bytes))(scope, receive, send)
            return
        except TimeoutError:
            await error_response(BodyReadTimeout(timeout_s=self._read_timeout_s))(scope, receive, send)
            return
        except _ClientGone:
            return
        await self._app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def install_guards(app: FastAPI, settings: Settings) -> None:
    """The body limits, and the key check in front of them; a warning when there is no key."""
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s)
    keys = [key.get_secret_value() for key in settings.api_key]
    if any(keys):
        # Added last, so it runs first: no body is read for a caller without a key.
        app.add_middleware(ApiKeyAuth, keys=keys)
    else:
        logger.warning(
            "INFERENCE_API_KEY is not set: anyone who can reach this front can use, load and unload "
            "every model (see docs/security.md)"
        )
