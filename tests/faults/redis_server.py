"""A redis-server of the test's own, on a spare port or a Unix socket, that the test can stop and start again."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


class RedisServer:
    def __init__(self, *, port: int, folder: Path, unix_socket: bool = False) -> None:
        """`unix_socket`: listen on `folder`/redis.sock only (port 0 turns TCP off)."""
        self.port = 0 if unix_socket else port
        self.socket = folder / "redis.sock" if unix_socket else None
        self.url = f"unix://{self.socket}?db=0" if unix_socket else f"redis://127.0.0.1:{port}/0"
        self._folder = folder
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        self._folder.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._folder),
                *(["--unixsocket", str(self.socket), "--unixsocketperm", "700"] if self.socket else []),
            ],
            stdout=(self._folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"the private redis-server at {self.url} did not start")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)
