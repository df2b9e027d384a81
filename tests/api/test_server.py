"""Slow clients against a real front process: late headers and late bodies do not hold a connection."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import StartFront

# Generous: the server closes long before; this only keeps a broken server from hanging the test.
_RECV_LIMIT_S = 30.0


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.settimeout(_RECV_LIMIT_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.redis
def test_slow_or_oversized_requests_lose_their_connection_and_others_are_served(start_front: StartFront) -> None:
    url = start_front(
        INFERENCE_HEADER_READ_TIMEOUT_S="0.3", INFERENCE_BODY_READ_TIMEOUT_S="0.3", INFERENCE_MAX_HEADER_BYTES="2048"
    )
    with connect(url) as trickling:
        trickling.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        assert read_all(trickling) == b""

    with connect(url) as silent:
        assert read_all(silent) == b""

    with connect(url) as bloated:
        bloated.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096)
        answer = read_all(bloated)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400")

    with connect(url) as slow_body:
        slow_body.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = read_all(slow_body)
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in answer

    assert httpx.get(url + "/health").json() == {"status": "ok"}
