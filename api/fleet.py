"""Loading and unloading models: memory budget, LRU eviction, commands to the fleet."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

from redis.asyncio import Redis

from api.catalog import Catalog, FleetView
from api.errors import Conflict, ModelNotFound, ModelUnavailable, RequestTimeout
from presets.errors import UnknownModelError
from presets.registry import Registry
from worker.budget import in_use_by_host_mb, worker_memory_mb
from worker.fleet_protocol import UNLOAD, FleetCommand, encode_command
from worker.keys import Keys

_POLL_S = 0.1


class FleetService:
    def __init__(self, *, catalog: Catalog, redis: Redis) -> None:
        self._catalog = catalog
        self._redis = redis
        self._settings = catalog.settings
        self._keys = Keys(prefix=catalog.settings.key_prefix)

    def memory_mb(self, model: str) -> int:
        """What one worker of the model takes: weights, KV cache for its context, buffers."""
        return worker_memory_mb(self._catalog.registry, self._settings, model)

    def roomiest_host(self, view: FleetView) -> tuple[str | None, int]:
        """The host with the least memory in use and that use (the budget is per host).

        Models being started whose worker has not registered yet count on that host too:
        where they will land is the supervisors' choice.
        """
        by_host = in_use_by_host_mb(self._catalog.registry, self._settings, view.workers)
        with_workers = {w.model for w in view.workers}
        pending = sum(self.memory_mb(m) for m in view.loading - with_workers)
        if not by_host:
            return None, pending
        host = min(by_host, key=lambda h: by_host[h])
        return host, by_host[host] + pending

    def _known(self, model: str) -> None:
        try:
            self._catalog.registry.model(model)
        except UnknownModelError:
            raise ModelNotFound(model) from None

    async def load(self, model: str) -> dict[str, object]:
        self._known(model)
        view = await self._catalog.view()
        if view.status(model) == "loaded":
            return self._answer(model, "loaded")
        if model not in view.loading:
            if not files_present(self._catalog.registry, model):
                raise Conflict(
                    f"The files of {model} are not in {self._settings.models_dir}; "
                    f"download them with `python -m presets download {model}`",
                    param="model_id",
                )
            await self._make_room(model, view)
            command = FleetCommand(action="load", model=model, request_id=uuid.uuid4().hex)
            # An explicit load asks again for a model the fleet gave up on; a new reason
            # that shows up while we wait is this attempt's.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.delete(self._keys.unavailable(model))
                pipe.publish(self._keys.fleet, encode_command(command))
                _, receivers = await pipe.execute()
            if not receivers:
                raise ModelUnavailable(
                    "No fleet supervisor is running to start a worker; run `python -m worker.fleet`, "
                    f"or start one by hand: INFERENCE_WORKER_MODEL={model} arq worker.Settings"
                )
        await self._wait(lambda v: v.status(model) == "loaded", what=f"loading {model}", failed=model)
        return self._answer(model, "loaded")

    async def unload(self, model: str) -> dict[str, object]:
        self._known(model)
        view = await self._catalog.view()
        if view.status(model) is None:
            return self._answer(model, "unloaded")
        await self._stop(model)
        await self._wait(
            lambda v: v.status(model) is None and not any(w.model == model for w in v.workers),
            what=f"unloading {model}",
        )
        return self._answer(model, "unloaded")

    async def _stop(self, model: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.publish(self._keys.fleet, encode_command(FleetCommand(action="unload", model=model)))
            pipe.publish(self._keys.control(model), UNLOAD)
            pipe.delete(self._keys.loading(model))
            await pipe.execute()

    async def _make_room(self, model: str, view: FleetView) -> None:
        budget = self._settings.memory_budget_mb
        needed = self.memory_mb(model)
        host, in_use = self.roomiest_host(view)
        if in_use + needed <= budget:
            return
        served = view.served()
        # The running hashes, not the workers' heartbeat fields: they change with every job.
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in served:
                pipe.hlen(self._keys.running(model))
            running = await pipe.execute()
        idle = [m for m, jobs in zip(served, running, strict=True) if not jobs]
        if not self._settings.evict_lru:
            raise Conflict(
                f"Loading {model} needs {needed} MB but {in_use} of the {budget} MB budget is in use; "
                f"unload one of: {', '.join(sorted(served)) or 'nothing is loaded'}",
                param="model_id",
            )
        last_used = dict(await self._redis.zrange(self._keys.last_used, 0, -1, withscores=True))
        for victim in sorted(idle, key=lambda m: last_used.get(m.encode(), 0.0)):
            if in_use + needed <= budget:
                break
            await self._stop(victim)
            in_use -= sum(self.memory_mb(w.model) for w in served[victim] if w.host == host)
        if in_use + needed > budget:
            raise Conflict(
                f"Loading {model} needs {needed} MB; even after evicting idle models {in_use} of the "
                f"{budget} MB budget stays in use by busy models",
                param="model_id",
            )

    async def _wait(self, done: Callable[[FleetView], bool], *, what: str, failed: str | None = None) -> None:
        """Until `done`; ModelUnavailable as soon as the fleet gives up on the model `failed`."""
        deadline = time.monotonic() + self._settings.request_timeout_s
        while time.monotonic() < deadline:
            view = await self._catalog.view()
            if done(view):
                return
            if failed is not None and failed in view.unavailable:
                raise ModelUnavailable(f"The model `{failed}` could not be loaded: {view.unavailable[failed]}")
            await asyncio.sleep(_POLL_S)
        raise RequestTimeout(f"Timed out {what}.")

    def _answer(self, model: str, status: str) -> dict[str, object]:
        return {"id": model, "object": "model", "status": status, "memory_mb": self.memory_mb(model)}


def files_present(registry: Registry, model: str) -> bool:
    if registry.model(model).embedded:
        return registry.embedded_installed(model)
    return all(path.is_file() for path in registry.model_paths(model))
