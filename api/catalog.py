"""Which models exist, which are served right now, and which one a request goes to."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis

from api.auto_route import AutoRouter
from api.errors import ContextLengthExceeded, ModelNotFound, ModelUnavailable
from presets.active import ActiveConfig
from presets.errors import ModelNotLoadedError, UnknownModelError
from presets.registry import Registry
from presets.routing import resolve_model
from presets.settings import Settings
from worker.keys import Keys
from worker.presence import FleetReader, WorkerInfo

SERVING_STATES = frozenset({"ready", "busy"})
_LOADING_POLL_S = 0.1


@dataclass(frozen=True, kw_only=True)
class FleetView:
    """A snapshot of the workers: served models, models loading, and the workers themselves."""

    workers: tuple[WorkerInfo, ...]
    loading: frozenset[str]
    # Models the fleet gave up starting -> why (see worker.fleet).
    unavailable: Mapping[str, str] = field(default_factory=dict)

    def served(self) -> dict[str, list[WorkerInfo]]:
        served: dict[str, list[WorkerInfo]] = {}
        for info in self.workers:
            if info.state in SERVING_STATES:
                served.setdefault(info.model, []).append(info)
        return served

    def status(self, model: str) -> str | None:
        """loaded, loading, or None when no worker serves or loads it."""
        if model in self.served():
            return "loaded"
        if model in self.loading:
            return "loading"
        return None


class Catalog:
    def __init__(self, *, settings: Settings, redis: Redis, registry: Registry, active: ActiveConfig) -> None:
        self.settings = settings
        self.registry = registry
        self.active = active
        self._redis = redis
        self._keys = Keys(prefix=settings.key_prefix)
        self._fleet = FleetReader(redis, keys=self._keys)
        self._auto = (
            AutoRouter(
                redis, keys=self._keys, strategy=settings.auto_route_strategy, fallback=settings.auto_route_fallback
            )
            if settings.auto_route_enabled
            else None
        )

    def roles(self) -> Mapping[str, tuple[str, ...]]:
        """The active preset's roles, and the registry's for models loaded beyond it."""
        return {**self.registry.roles_by_model(), **self.active.roles}

    async def view(self) -> FleetView:
        models = self.registry.model_ids()
        markers_of = [self._keys.loading(m) for m in models] + [self._keys.unavailable(m) for m in models]
        workers, markers = await self._fleet.read(loading_keys=markers_of)
        loading = {m for m, marker in zip(models, markers[: len(models)], strict=True) if marker}
        loading |= {w.model for w in workers if w.state == "loading"}
        given_up = [m for m, marker in zip(models, markers[len(models) :], strict=True) if marker]
        unavailable: dict[str, str] = {}
        if given_up:
            # Rare, so its reasons cost a round trip only when some model has one.
            async with self._redis.pipeline(transaction=False) as pipe:
                for model in given_up:
                    pipe.hget(self._keys.unavailable(model), "reason")
                reasons = await pipe.execute()
            unavailable = {m: (r or b"").decode() for m, r in zip(given_up, reasons, strict=True) if r is not None}
        return FleetView(workers=tuple(workers), loading=frozenset(loading), unavailable=unavailable)

    async def check_known(self, requested: str) -> None:
        """A model id, role or `auto` this service knows; ModelNotFound otherwise."""
        try:
            resolve_model(
                requested,
                task_type=None,
                loaded=self.registry.model_ids(),
                roles=self.roles(),
                known=self.registry.model_ids(),
            )
        except UnknownModelError:
            raise ModelNotFound(requested) from None
        except ModelNotLoadedError:
            return

    async def route(
        self, requested: str, *, task_type: str | None, deadline: float | None = None, max_tokens: int | None = None
    ) -> str:
        """The served model for a request; waits while the wanted model is still loading.

        With `max_tokens`, ContextLengthExceeded when that alone is more than the model's context
        holds, judged on the same read of the fleet.
        """
        while True:
            view = await self.view()
            served = view.served()
            try:
                if self._auto is not None:
                    model = await self._auto_route(requested, task_type=task_type, view=view)
                else:
                    model = resolve_model(
                        requested,
                        task_type=task_type,
                        loaded=list(served),
                        roles=self.roles(),
                        known=self.registry.model_ids(),
                    )
                self._check_limit(view, model, max_tokens)
                return model
            except UnknownModelError:
                raise ModelNotFound(requested) from None
            except ModelNotLoadedError as exc:
                waiting = exc.model_id in view.loading
                if not waiting or (deadline is not None and time.monotonic() >= deadline):
                    message = _unavailable_message(exc.model_id, self.registry, view.unavailable.get(exc.model_id))
                    raise ModelUnavailable(message) from None
            await asyncio.sleep(_LOADING_POLL_S)

    async def _auto_route(self, requested: str, *, task_type: str | None, view: FleetView) -> str:
        assert self._auto is not None
        roles = self.roles()
        served = [m for m in self.active.models if m in view.served()]
        served += [m for m in view.served() if m not in served]
        role, candidates = self._auto.candidates(
            requested, task_type=task_type, served=served, roles=roles, known=self.registry.model_ids()
        )
        return await self._auto.pick(role, candidates, roles=roles, workers=view.workers)

    def _check_limit(self, view: FleetView, model: str, max_tokens: int | None) -> None:
        """ContextLengthExceeded when `max_tokens` alone is more than the model's context holds.

        The context is what the model's workers report (their n_ctx), else the registry's.
        """
        if max_tokens is None:
            return
        workers = view.served().get(model, [])
        context = max((w.context_length for w in workers), default=0) or self.registry.context_length(model)
        if max_tokens > context:
            raise ContextLengthExceeded(
                f"max_tokens is {max_tokens}, more than the {context}-token context of `{model}` "
                f"(which the prompt shares): ask for fewer than {context}.",
                param="max_tokens",
            )


def _unavailable_message(name: str, registry: Registry, reason: str | None = None) -> str:
    if reason is not None:
        return f"The model `{name}` is unavailable: {reason}"
    if name in registry.model_ids():
        return f"The model `{name}` is not loaded on any worker right now; load it with POST /v1/models/{name}/load."
    return f"No loaded model has the role `{name}`."
