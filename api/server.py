"""How the front's HTTP server treats connections: deadlines and size limits for slow clients.

uvicorn closes a keep-alive connection that stays idle, but once a client has sent a first
byte it waits for the rest of the request line and headers for ever, so a client trickling
a header a byte at a time would hold its connection indefinitely. The protocols here add a
deadline for the request line and headers, and a cap on their size; the body has its own
limits in api/security.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from presets.settings import Settings


class HeaderDeadline:
    """Closes a connection whose request line and headers are late or too large.

    Armed when a connection opens and when the next request's first bytes arrive after a
    response; disarmed as soon as the server has parsed a request's headers (it then starts
    a new request cycle).
    """

    def __init__(self, *, loop: asyncio.AbstractEventLoop, timeout_s: float, max_bytes: int) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._waiting_since: object = None
        self._received = 0

    def arm(self, transport: asyncio.BaseTransport, cycle: object) -> None:
        self.disarm()
        self._transport = transport
        self._waiting_since = cycle
        self._received = 0
        self._timer = self._loop.call_later(self._timeout_s, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def before_data(self, transport: asyncio.BaseTransport, cycle: Any) -> None:
        """Arm for a new request when data comes in between requests."""
        if self._timer is None and (cycle is None or cycle.response_complete):
            self.arm(transport, cycle)

    def after_data(self, cycle: object, size: int) -> None:
        if self._timer is None:
            return
        if cycle is not self._waiting_since:
            # A new request cycle: its headers are in.
            self.disarm()
            return
        self._received += size
        if self._received > self._max_bytes:
            self._expire()

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()


class _HeaderGuard:
    """Mixed into one of uvicorn's HTTP protocols: a HeaderDeadline per connection.

    protocol_class sets the limits on a subclass.
    """

    header_read_timeout_s: float = 10.0
    max_header_bytes: int = 16 * 1024
    # Provided by the uvicorn protocol this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.header_deadline = HeaderDeadline(
            loop=self.loop, timeout_s=self.header_read_timeout_s, max_bytes=self.max_header_bytes
        )
        self.header_deadline.arm(transport, self.cycle)

    def data_received(self, data: bytes) -> None:
        self.header_deadline.before_data(self.transport, self.cycle)
        super().data_received(data)  # type: ignore[misc]
        self.header_deadline.after_data(self.cycle, len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.disarm()
        super().connection_lost(exc)  # type: ignore[misc]


class GuardedH11Protocol(_HeaderGuard, H11Protocol):
    """uvicorn's h11 protocol with a header deadline."""


class GuardedHttpToolsProtocol(_HeaderGuard, HttpToolsProtocol):
    """uvicorn's faster httptools protocol, which has no header size limit of its own, with one."""


def protocol_class(settings: Settings, *, httptools: bool = True) -> type[asyncio.Protocol]:
    """The HTTP protocol for uvicorn with this configuration's header limits."""
    base: type[asyncio.Protocol] = GuardedHttpToolsProtocol if httptools else GuardedH11Protocol
    limits = {"header_read_timeout_s": settings.header_read_timeout_s, "max_header_bytes": settings.max_header_bytes}
    return cast("type[asyncio.Protocol]", type(f"Configured{base.__name__}", (base,), limits))


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.run's connection options for these settings."""
    return {
        "http": protocol_class(settings),
        # For the h11 protocol: a request line and headers over this size are a 400.
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": max(1, round(settings.keep_alive_timeout_s)),
    }
