"""Helpers the fixtures use: running workers and fronts as real processes on the real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from presets.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_REDIS_DB = int(os.environ.get("INFERENCE_TEST_REDIS_DB", "13"))
TEST_REDIS_URL = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key this test wrote: ours, and arq's keys for our job ids."""
    for pattern in (f"{prefix}:*", f"arq:*:{prefix}:*"):
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(args: list[str], *, env: Mapping[str, str], log: Path) -> Proc:
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
    )
    return Proc(process=process, log=log)


def wait_for_worker(client: redis.Redis, *, prefix: str, model: str, proc: Proc, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{proc.output()}")
        for key in client.scan_iter(match=f"{prefix}:worker:{model}:*"):
            if client.hget(key, "state") in (b"ready", b"busy"):
                return
        time.sleep(0.05)
    raise TimeoutError(f"worker for {model} not ready:\n{proc.output()}")


def wait_for_http(url: str, *, proc: Proc, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise RuntimeError(f"front exited early:\n{proc.output()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"front not up:\n{proc.output()}")


@contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


@asynccontextmanager
async def in_process_front(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A front app run inside the test's event loop (start-up and shutdown included), and a client for it."""
    from api.app import create_app

    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as client,
    ):
        yield client
