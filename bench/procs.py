"""Starting and stopping the processes a benchmark compares, each on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if not self.alive():
            return
        # SIGTERM first: uvicorn and arq shut down cleanly on it, and so free their Redis keys.
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the finally blocks stop every process this run started.

    A run in the background of a non-interactive shell ignores SIGINT, so SIGTERM is the
    way to stop it, and Python's default for it would leave the services running.
    """

    def leave(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, leave)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(name: str, argv: list[str], *, env: dict[str, str], log_dir: Path) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)
    return Service(name=name, process=process, log=log)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def wait_until(
    check: Callable[[], bool], *, service: Service, what: str, timeout_s: float = 120, every_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not service.alive():
            raise RuntimeError(f"{service.name} exited while waiting for {what}:\n{service.tail()}")
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if check():
                return
        time.sleep(every_s)
    raise TimeoutError(f"{service.name}: no {what} after {timeout_s:.0f}s:\n{service.tail()}")


def ready_or_stopped(service: Service, check: Callable[[], bool], *, what: str) -> Service:
    """Wait for a started process to be ready; never leave one running that did not get there."""
    try:
        wait_until(check, service=service, what=what)
    except BaseException:
        service.stop()
        raise
    return service


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2).status_code == 200


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """What every process of this service gets: its own Redis prefix and DB, 2 threads."""

    redis_url: str
    prefix: str
    models_dir: Path
    threads: int
    n_ctx: int
    log_dir: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "INFERENCE_REDIS_URL": self.redis_url,
            "INFERENCE_KEY_PREFIX": self.prefix,
            "INFERENCE_MODELS_DIR": str(self.models_dir),
            "INFERENCE_N_THREADS": str(self.threads),
            "INFERENCE_N_CTX": str(self.n_ctx),
            "INFERENCE_LOG_LEVEL": "WARNING",
            # Admission control would turn the Poisson overload into 429s: measure the path instead.
            "INFERENCE_MAX_CONCURRENT_REQUESTS": "100000",
            **extra,
        }


def start_front(config: ServiceConfig, *, name: str = "front", **extra: str) -> tuple[Service, str]:
    port = free_port()
    env = config.env(INFERENCE_PORT=str(port), INFERENCE_HOST="127.0.0.1", **extra)
    service = spawn(name, python_module("api"), env=env, log_dir=config.log_dir)
    url = f"http://127.0.0.1:{port}"
    return ready_or_stopped(service, http_ok(url + "/health"), what="/health"), url


def start_worker(config: ServiceConfig, model: str, *, front_url: str, name: str = "", **extra: str) -> Service:
    """Start `arq worker.Settings` for a model and wait until the front lists it as loaded."""
    env = config.env(INFERENCE_WORKER_MODEL=model, **extra)
    argv = [str(Path(sys.executable).with_name("arq")), "worker.Settings"]
    service = spawn(name or f"worker-{model}", argv, env=env, log_dir=config.log_dir)

    def loaded() -> bool:
        body = httpx.get(front_url + "/health/ready", timeout=2).json()
        return model in body.get("loaded_models", ())

    return ready_or_stopped(service, loaded, what=f"{model} ready")


def start_socket_redis(*, log_dir: Path) -> tuple[Service, str]:
    """A private redis-server on a Unix socket only (port 0: no TCP), and its URL.

    What a host that runs Redis beside the front and the workers can use instead of loopback TCP.
    """
    socket_path = log_dir / "redis.sock"
    # The kernel's limit on a socket's path (sun_path) is 108 bytes, with its terminating NUL.
    if len(str(socket_path).encode()) > 107:
        raise ValueError(f"socket path too long for a Unix socket: {socket_path}")
    argv = ["redis-server", "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(log_dir)]  # fmt: skip
    service = spawn("redis-socket", argv, env={}, log_dir=log_dir)
    url = f"unix://{socket_path}?db=0"

    def answers() -> bool:
        client = redis.Redis.from_url(url)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    return ready_or_stopped(service, answers, what="PING on its socket"), url


def start_llama_cpp_server(model_path: Path, *, threads: int, n_ctx: int, log_dir: Path) -> tuple[Service, str]:
    """llama-cpp-python's own OpenAI server; it does one request at a time behind a lock."""
    port = free_port()
    argv = python_module(
        # llama_cpp.server with the worker's CPU buffer choice (see bench/llama_cpp_server.py).
        "bench.llama_cpp_server",
        "--model", str(model_path),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--n_ctx", str(n_ctx),
        "--host", "127.0.0.1",
        "--port", str(port),
        # Its default cancels a running stream whenever another request arrives, which would
        # turn every concurrent run into a string of truncated answers.
        "--interrupt_requests", "False",
    )  # fmt: skip
    service = spawn("llama-cpp-python-server", argv, env={}, log_dir=log_dir)
    url = f"http://127.0.0.1:{port}"
    return ready_or_stopped(service, http_ok(url + "/v1/models"), what="/v1/models"), url


def start_llama_server(
    binary: Path, model_path: Path, *, threads: int, n_ctx: int, slots: int, log_dir: Path, repack: bool = True
) -> tuple[Service, str]:
    """llama.cpp's C++ server with `slots` parallel sequences batched into each decode.

    `repack` False keeps the weights in their file's layout (`--no-repack`), as the worker does on AMX CPUs.
    """
    port = free_port()
    argv = [
        str(binary),
        "-m", str(model_path),
        "-t", str(threads),
        "-tb", str(threads),
        "-np", str(slots),
        # The context is split between the slots: give each the size the others get.
        "-c", str(n_ctx * slots),
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    if not repack:
        argv.append("--no-repack")
    service = spawn("llama-server", argv, env={}, log_dir=log_dir)
    url = f"http://127.0.0.1:{port}"
    return ready_or_stopped(service, http_ok(url + "/health"), what="/health"), url


@contextlib.contextmanager
def running(*services: Service) -> Iterator[None]:
    try:
        yield
    finally:
        for service in reversed(services):
            service.stop()


def clean_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key a run wrote: the service's, and arq's keys for its job ids."""
    client = redis.Redis.from_url(redis_url)
    deleted = 0
    try:
        for pattern in (f"{prefix}:*", f"arq:*:{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                deleted += cast(int, client.delete(*keys))
    finally:
        client.close()
    return deleted
