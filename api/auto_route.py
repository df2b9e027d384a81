"""Auto-routing (INFERENCE_AUTO_ROUTE_*): spread requests over the models that can answer.

Which models can answer: the one named when it is served; for a role (or `auto` with a
task type), every served model with that role (then the role's fallback, as without
auto-routing); for a named model that is not loaded, with fallback on, every served model
that shares its main role. Among them the strategy picks:

- least_busy: the fewest queued plus running jobs per worker;
- round_robin: each in turn (a counter in Redis, shared by every front);
- capability_match: a model whose main (first) role is the one wanted, then preset order.

Within one model, workers share the model's queue: an idle worker takes the next job,
so requests spread over a model's workers by who is free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from redis.asyncio import Redis

from presets.errors import ModelNotLoadedError, UnknownModelError
from presets.roles import ROLES
from presets.routing import AUTO, ROLE_FALLBACKS, role_for_task, strip_prefix
from worker.keys import Keys
from worker.presence import WorkerInfo


class AutoRouter:
    def __init__(self, redis: Redis, *, keys: Keys, strategy: str, fallback: bool) -> None:
        self._redis = redis
        self._keys = keys
        self._strategy = strategy
        self._fallback = fallback

    def candidates(
        self,
        requested: str,
        *,
        task_type: str | None,
        served: Sequence[str],
        roles: Mapping[str, Sequence[str]],
        known: Sequence[str],
    ) -> tuple[str, list[str]]:
        """(the role wanted, served models that can answer, in preference order)."""
        name = strip_prefix(requested)
        lowered = name.lower()
        by_lower = {m.lower(): m for m in known}
        if lowered in by_lower:
            model = by_lower[lowered]
            if model in served:
                return (roles.get(model, ("primary",)) or ("primary",))[0], [model]
            model_roles = list(roles.get(model, ()))
            if not self._fallback or not model_roles:
                raise ModelNotLoadedError(model, loaded=served)
            for role in model_roles:
                sharing = [m for m in served if role in roles.get(m, ())]
                if sharing:
                    return role, sharing
            raise ModelNotLoadedError(model, loaded=served)
        if lowered in ("", AUTO):
            role = role_for_task(task_type)
        elif lowered in ROLES:
            role = lowered
        else:
            raise UnknownModelError(name, known=known)
        chain: list[str | None] = [role, ROLE_FALLBACKS[role]]
        for wanted in chain:
            if wanted is None:
                if served:
                    return role, list(served)
                continue
            having = [m for m in served if wanted in roles.get(m, ())]
            if having:
                return wanted, having
        raise ModelNotLoadedError(role, loaded=served)

    async def pick(
        self, role: str, candidates: list[str], *, roles: Mapping[str, Sequence[str]], workers: Sequence[WorkerInfo]
    ) -> str:
        if len(candidates) == 1:
            return candidates[0]
        if self._strategy == "round_robin":
            turn = int(await self._redis.incr(self._keys.round_robin(role)))
            return sorted(candidates)[(turn - 1) % len(candidates)]
        if self._strategy == "capability_match":
            main = [m for m in candidates if (roles.get(m) or ("",))[0] == role]
            return (main or candidates)[0]
        return await self._least_busy(candidates, workers)

    async def _least_busy(self, candidates: list[str], workers: Sequence[WorkerInfo]) -> str:
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in candidates:
                pipe.zcard(self._keys.queue(model))
            queued = await pipe.execute()
        load: dict[str, float] = {}
        for model, waiting in zip(candidates, queued, strict=True):
            serving = [w for w in workers if w.model == model]
            # The queue counts running jobs too (arq drops a job from it when it ends).
            load[model] = int(waiting) / max(len(serving), 1)
        return min(candidates, key=lambda m: load[m])
