"""The fleet supervisor: one arq worker process per model of the active preset.

`python -m worker.fleet` validates the active configuration (a one-line error and exit
status 2 when it is wrong), starts a worker per model, restarts a worker that crashes,
and starts or stops workers when a front asks for a load or an unload over Redis.
Workers started by hand with `arq worker.Settings` work beside it; the front sees both
kinds the same way, through the workers' own registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis

from presets.errors import PresetsError
from presets.registry import registry_from_settings
from presets.settings import Settings, load_settings
from presets.validation import validate_active
from worker.fleet_protocol import decode_command
from worker.keys import Keys

logger = logging.getLogger("worker.fleet")

_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_CHECK_INTERVAL_S = 0.5
_SETUP_ERROR_EXIT = 2


@dataclass(kw_only=True)
class Child:
    model: str
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Fleet:
    def __init__(self, *, settings: Settings, redis: Redis) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = Keys(prefix=settings.key_prefix)
        self._children: dict[str, Child] = {}
        self._wanted: set[str] = set()
        self._crashes: dict[str, int] = {}
        self._next_start: dict[str, float] = {}

    def _spawn(self, model: str) -> None:
        env = {**os.environ, "INFERENCE_WORKER_MODEL": model}
        # `python -m worker` is `arq worker.Settings` with a one-line error and exit 2 on bad setup.
        process = subprocess.Popen([sys.executable, "-m", "worker"], env=env)
        self._children[model] = Child(model=model, process=process)
        logger.info("started worker for %s (pid %d)", model, process.pid)

    async def load(self, model: str) -> None:
        self._wanted.add(model)
        if model not in self._children:
            await self._redis.set(self._keys.loading(model), b"1", ex=int(self._settings.request_timeout_s) + 60)
            self._spawn(model)

    def unload(self, model: str) -> None:
        # The worker stops itself on the control channel, after its running jobs.
        self._wanted.discard(model)

    async def _reap(self) -> None:
        for model, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self._children[model]
            await self._redis.delete(self._keys.loading(model))
            if model not in self._wanted:
                logger.info("worker for %s stopped", model)
                continue
            if code == _SETUP_ERROR_EXIT:
                logger.error("worker for %s cannot start (see its error above); not restarting", model)
                self._wanted.discard(model)
                continue
            crashes = self._crashes.get(model, 0)
            delay = _RESTART_BACKOFF_S[min(crashes, len(_RESTART_BACKOFF_S) - 1)]
            self._crashes[model] = crashes + 1
            self._next_start[model] = time.monotonic() + delay
            logger.warning("worker for %s exited with %s; restarting in %.0fs", model, code, delay)
        for model in list(self._next_start):
            if time.monotonic() >= self._next_start[model] and model in self._wanted:
                del self._next_start[model]
                await self.load(model)

    async def run(self, models: list[str]) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._keys.fleet)
        for model in models:
            await self.load(model)
        try:
            while True:
                message = await pubsub.get_message(timeout=_CHECK_INTERVAL_S)
                if message is not None:
                    try:
                        command = decode_command(message["data"])
                    except Exception:
                        logger.warning("ignored a malformed fleet command")
                    else:
                        if command.action == "load":
                            await self.load(command.model)
                        else:
                            self.unload(command.model)
                await self._reap()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        self._wanted.clear()
        for child in self._children.values():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        for child in self._children.values():
            await asyncio.to_thread(child.process.wait)
            await self._redis.delete(self._keys.loading(child.model))


async def _main(settings: Settings, models: list[str]) -> None:
    redis = Redis.from_url(settings.redis_url)
    fleet = Fleet(settings=settings, redis=redis)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    runner = asyncio.create_task(fleet.run(models))
    await stopping.wait()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await fleet.stop()
    await redis.aclose()


def main() -> int:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        registry = registry_from_settings(settings)
        active = registry.resolve_active(settings)
        validate_active(active, registry, check_files=True)
    except PresetsError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    logger.info("config %s (%s): %s", active.config, active.mode, ", ".join(active.models))
    asyncio.run(_main(settings, list(active.models)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
