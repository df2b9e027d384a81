"""Which models exist, which are served right now, and which one a request goes to."""

from __future__ import annotations

from redis.asyncio import Redis

from api.errors import ModelNotFound, ModelUnavailable
from presets.embedded import EMBEDDED_MODELS
from presets.settings import Settings
from worker.keys import Keys
from worker.presence import WorkerInfo, live_workers

GATEWAY_PREFIXES = ("inference:", "local:")
SERVING_STATES = frozenset({"ready", "busy"})


def strip_gateway_prefix(model: str) -> str:
    for prefix in GATEWAY_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


class Catalog:
    def __init__(self, *, settings: Settings, redis: Redis) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = Keys(prefix=settings.key_prefix)

    def known_models(self) -> list[str]:
        return list(EMBEDDED_MODELS)

    async def workers(self) -> list[WorkerInfo]:
        return await live_workers(self._redis, keys=self._keys)

    async def served_models(self) -> dict[str, list[WorkerInfo]]:
        served: dict[str, list[WorkerInfo]] = {}
        for info in await self.workers():
            if info.state in SERVING_STATES:
                served.setdefault(info.model, []).append(info)
        return served

    async def route(self, requested: str, *, task_type: str | None) -> str:
        model = strip_gateway_prefix(requested)
        served = await self.served_models()
        if model in served:
            return model
        if model in self.known_models():
            raise ModelUnavailable(f"The model `{model}` is not loaded on any worker right now.")
        raise ModelNotFound(requested)
