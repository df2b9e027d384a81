"""The fleet supervisor: one arq worker process per model of the active preset.

`python -m worker.fleet` validates the active configuration (a one-line error and exit
status 2 when it is wrong), starts a worker per model, restarts a worker that crashes,
and starts or stops workers when a front asks for a load or an unload over Redis.
Workers started by hand with `arq worker.Settings` work beside it; the front sees both
kinds the same way, through the workers' own registration.

Crashes restart with exponential backoff; too many within a window, or a worker that
cannot set up (exit status 2), make the model unavailable with a reason in Redis. Starting
a worker (preset or request) happens under a per-host lock that checks the host's memory
budget, and a load request is claimed by exactly one supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time

import msgspec
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from presets.errors import PresetsError, UnknownModelError
from presets.logs import configure_logging
from presets.placement import placement_for
from presets.registry import Registry, registry_from_settings
from presets.settings import Settings, load_settings
from presets.validation import validate_active
from worker.budget import worker_memory_mb
from worker.fleet_child import Child, describe_exit
from worker.fleet_protocol import FleetCommand, decode_command
from worker.host_lock import LockTimeout, host_lock
from worker.keys import Keys
from worker.presence import FleetReader, WorkerInfo
from worker.redis_client import create_redis
from worker.restarts import CrashHistory, RestartPolicy

logger = logging.getLogger("worker.fleet")

_CHECK_INTERVAL_S = 0.5
_SETUP_ERROR_EXIT = 2
_REDIS_RETRY_S = (0.5, 1.0, 2.0, 5.0)
# A started worker registers (state "loading") within seconds; the host lock is held until
# it does, so the next budget check counts it.
_REGISTER_WAIT_S = 30.0
_LOCK_WAIT_S = 60.0
_CLAIM_TTL_S = 300
# A loading worker asked to unload gets this long after SIGTERM before SIGKILL.
_UNLOAD_GRACE_S = 10.0
_SERVING = frozenset({"ready", "busy"})


class OverBudget(RuntimeError):
    pass


class Fleet:
    def __init__(self, *, settings: Settings, redis: Redis, registry: Registry) -> None:
        self._settings = settings
        self._redis = redis
        self._registry = registry
        self._keys = Keys(prefix=settings.key_prefix)
        self._fleet = FleetReader(redis, keys=self._keys)
        self._host = socket.gethostname()
        self._policy = RestartPolicy(
            base_s=settings.worker_restart_base_s,
            cap_s=settings.worker_restart_cap_s,
            max_crashes=settings.worker_max_crashes,
            window_s=settings.worker_crash_window_s,
        )
        self._children: dict[str, Child] = {}
        self._wanted: set[str] = set()
        self._history: dict[str, CrashHistory] = {}
        # model -> monotonic time of its next start (preset start-up and restarts).
        self._due: dict[str, float] = {}
        self._unloading: set[str] = set()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, models: list[str]) -> None:
        for model in models:
            self._wanted.add(model)
            self._due[model] = time.monotonic()
        failures = 0
        while True:
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis gone or answering errors: the children keep running; subscribe again.
                delay = _REDIS_RETRY_S[min(failures, len(_REDIS_RETRY_S) - 1)]
                failures += 1
                logger.warning("fleet lost Redis; retrying in %.1fs", delay, exc_info=True)
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _serve(self) -> None:
        pubsub: PubSub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keys.fleet)
            while True:
                message = await pubsub.get_message(timeout=_CHECK_INTERVAL_S)
                if message is not None:
                    await self._on_command(message["data"])
                await self._tick()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _on_command(self, data: bytes) -> None:
        try:
            command = decode_command(data)
            self._registry.model(command.model)
        except (msgspec.MsgspecError, UnknownModelError):
            logger.warning("ignored a malformed fleet command")
            return
        if command.action == "load":
            await self._load_requested(command)
        else:
            self._unload(command.model)

    async def _tick(self) -> None:
        workers, _ = await self._fleet.read()
        await self._note_ready(workers)
        await self._reap()
        now = time.monotonic()
        for model, when in list(self._due.items()):
            if now >= when and model in self._wanted and model not in self._children:
                await self._start(model, claim=None)

    # -- load and unload ------------------------------------------------------------------

    async def _load_requested(self, command: FleetCommand) -> None:
        model = command.model
        self._unloading.discard(model)
        if model in self._children or model in self._due:
            self._wanted.add(model)
            return
        # An operator's explicit request: earlier crashes no longer count.
        self._history_of(model).reset()
        await self._start(model, claim=command.request_id or None)

    def _unload(self, model: str) -> None:
        self._wanted.discard(model)
        self._due.pop(model, None)
        # Its workers (ours or not) are on their way out: a load that follows (LRU eviction)
        # may count their memory as free.
        self._unloading.add(model)
        child = self._children.get(model)
        if child is not None and not child.ready and child.stopping_since_s is None:
            # A worker still loading has not subscribed to the control channel yet.
            logger.info("unloading %s while it loads (pid %d)", model, child.process.pid)
            child.stopping_since_s = time.monotonic()
            child.terminate()

    async def _start(self, model: str, *, claim: str | None) -> bool:
        """Start a worker if the host's budget allows; False when another supervisor claimed it."""
        try:
            async with host_lock(
                self._redis, self._keys.fleet_lock(self._host), ttl_s=_REGISTER_WAIT_S + 15, wait_s=_LOCK_WAIT_S
            ):
                self._check_budget(model, await self._host_workers())
                if claim is not None:
                    claimed = await self._redis.set(self._keys.fleet_claim(claim), self._host, nx=True, ex=_CLAIM_TTL_S)
                    if not claimed:
                        logger.info("load of %s claimed by another supervisor", model)
                        return False
                await self._redis.set(self._keys.loading(model), b"1", ex=self._loading_ttl_s())
                await self._redis.delete(self._keys.unavailable(model))
                placement = placement_for(model, self._settings, self._registry)
                child = Child.spawn(model, extra_env=placement.worker_env())
                self._children[model] = child
                self._wanted.add(model)
                self._due.pop(model, None)
                self._history_of(model).started(now_s=child.started_s)
                logger.info("started worker for %s (pid %d)", model, child.process.pid)
                await self._wait_registered(child)
            return True
        except OverBudget as exc:
            await self._give_up(model, str(exc))
            return False
        except LockTimeout:
            # Another supervisor on this host is stuck starting a worker: try again later.
            logger.warning("could not take the fleet lock for %s; retrying", model)
            self._due[model] = time.monotonic() + self._policy.base_s
            return False

    def _check_budget(self, model: str, workers: list[WorkerInfo]) -> None:
        budget = self._settings.memory_budget_mb
        needed = self._memory_mb(model)
        pids = {w.pid for w in workers}
        in_use_models = [w.model for w in workers if w.model not in self._unloading]
        # Our own workers that have not registered yet, or crashed and wait to restart, count too.
        in_use_models += [c.model for c in self._children.values() if c.process.pid not in pids]
        in_use_models += [
            m for m in self._due if m != model and m not in self._children and self._history_of(m).crashes
        ]
        in_use = sum(self._memory_mb(m) for m in in_use_models)
        if in_use + needed > budget:
            raise OverBudget(f"needs {needed} MB but {in_use} of the {budget} MB budget of host {self._host} is in use")
        gpu = self._gpu_of(model)
        gpu_budget = None if gpu is None else self._settings.gpu_memory_budget_mb.get(gpu)
        if gpu_budget is None:
            return
        on_gpu = sum(self._memory_mb(m) for m in in_use_models if self._gpu_of(m) == gpu)
        if on_gpu + needed > gpu_budget:
            raise OverBudget(
                f"needs {needed} MB but {on_gpu} of the {gpu_budget} MB budget of GPU {gpu}"
                f" on host {self._host} is in use"
            )

    def _gpu_of(self, model: str) -> int | None:
        return placement_for(model, self._settings, self._registry).gpu

    async def _wait_registered(self, child: Child) -> None:
        deadline = time.monotonic() + _REGISTER_WAIT_S
        while time.monotonic() < deadline and child.process.poll() is None:
            if any(w.pid == child.process.pid for w in await self._host_workers()):
                return
            await asyncio.sleep(0.1)

    async def _host_workers(self) -> list[WorkerInfo]:
        workers, _ = await self._fleet.read()
        return [w for w in workers if w.host == self._host]

    # -- exits, restarts, giving up -------------------------------------------------------

    async def _note_ready(self, workers: list[WorkerInfo]) -> None:
        ready = {w.pid for w in workers if w.host == self._host and w.state in _SERVING}
        for child in self._children.values():
            if not child.ready and child.process.pid in ready:
                child.ready = True
                await self._redis.delete(self._keys.unavailable(child.model))
        now = time.monotonic()
        for child in self._children.values():
            since = child.stopping_since_s
            if since is not None and child.process.poll() is None and now - since > _UNLOAD_GRACE_S:
                child.kill()

    async def _reap(self) -> None:
        for model, child in list(self._children.items()):
            code = child.process.poll()
            if code is None:
                continue
            await asyncio.to_thread(child.stderr.wait, 2.0)
            # Redis first: if it fails, the child stays listed and the next tick tries again.
            await self._on_exit(child, code)
            del self._children[model]

    async def _on_exit(self, child: Child, code: int) -> None:
        model = child.model
        how = describe_exit(code)
        if model not in self._wanted:
            await self._redis.delete(self._keys.loading(model))
            logger.info("worker for %s stopped (%s)", model, how)
            return
        if code == _SETUP_ERROR_EXIT:
            await self._give_up(model, child.stderr.last_line or f"the worker could not start ({how})")
            return
        history = self._history_of(model)
        verdict = history.verdict(now_s=time.monotonic())
        last = f": {child.stderr.last_line}" if child.stderr.last_line else ""
        if verdict.give_up:
            window = f"{self._policy.window_s:g}"
            await self._give_up(model, f"the worker crashed {verdict.crashes} times within {window}s ({how}){last}")
            history.record(now_s=time.monotonic())
            return
        # Still loading, as far as fronts are concerned: requests wait for the restart.
        await self._redis.set(self._keys.loading(model), b"1", ex=self._loading_ttl_s())
        history.record(now_s=time.monotonic())
        self._due[model] = time.monotonic() + verdict.delay_s
        logger.warning("worker for %s %s; restart %d in %.1fs%s", model, how, verdict.crashes, verdict.delay_s, last)

    async def _give_up(self, model: str, reason: str) -> None:
        logger.error("%s is unavailable: %s", model, reason)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.unavailable(model),
                mapping={"reason": reason, "since_ms": int(time.time() * 1000), "host": self._host},
            )
            pipe.delete(self._keys.loading(model))
            await pipe.execute()
        self._wanted.discard(model)
        self._due.pop(model, None)

    # -- helpers --------------------------------------------------------------------------

    def _history_of(self, model: str) -> CrashHistory:
        return self._history.setdefault(model, CrashHistory(policy=self._policy))

    def _memory_mb(self, model: str) -> int:
        try:
            return worker_memory_mb(self._registry, self._settings, model)
        except UnknownModelError:
            return 0

    def _loading_ttl_s(self) -> int:
        return int(self._settings.request_timeout_s + self._policy.cap_s) + 60

    async def stop(self) -> None:
        self._wanted.clear()
        for child in self._children.values():
            child.terminate()
        for child in self._children.values():
            await asyncio.to_thread(child.process.wait)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.delete(self._keys.loading(child.model)), 3.0)


async def _main(settings: Settings, registry: Registry, models: list[str]) -> None:
    redis = create_redis(settings.redis_url, role="worker")
    fleet = Fleet(settings=settings, redis=redis, registry=registry)
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
    configure_logging(settings)
    try:
        registry = registry_from_settings(settings)
        active = registry.resolve_active(settings)
        validate_active(active, registry, check_files=True)
    except PresetsError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    logger.info("config %s (%s): %s", active.config, active.mode, ", ".join(active.models))
    asyncio.run(_main(settings, registry, list(active.models)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
