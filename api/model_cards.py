"""The model list and readiness: registry models joined with what the workers report."""

from __future__ import annotations

from typing import Any

from api.catalog import Catalog
from api.fleet import FleetService, files_present


class ModelCards:
    def __init__(self, *, catalog: Catalog, fleet: FleetService) -> None:
        self._catalog = catalog
        self._fleet = fleet

    async def cards(self) -> list[dict[str, Any]]:
        registry = self._catalog.registry
        view = await self._catalog.view()
        served = view.served()
        roles = self._catalog.roles()
        cards = []
        for model in registry.model_ids():
            workers = served.get(model, [])
            status = view.status(model)
            reason = None
            if status is None and model in view.unavailable:
                status, reason = "unavailable", view.unavailable[model]
            elif status is None and not files_present(registry, model):
                status, reason = "unavailable", f"its files are not in {registry.models_dir / model}"
            card: dict[str, Any] = {
                "id": model,
                "created": min((w.started_ms for w in workers), default=0) // 1000,
                "status": status or "available",
                "memory_mb": self._fleet.memory_mb(model),
                "context_length": max((w.context_length for w in workers), default=registry.context_length(model)),
                "roles": list(roles.get(model, ())),
                "workers": len(workers),
            }
            if reason is not None:
                card["reason"] = reason
            cards.append(card)
        return cards

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        """(status code, body) for /health/ready."""
        active = self._catalog.active
        view = await self._catalog.view()
        served = view.served()
        loaded_of_preset = [m for m in active.models if m in served]
        # Shown only when the fleet gave up on a model, so a healthy body stays as documented.
        extra = {"unavailable": dict(sorted(view.unavailable.items()))} if view.unavailable else {}
        if view.loading or not served:
            reason = "Models still loading" if view.loading or not loaded_of_preset else "No model is loaded"
            if not view.loading and view.unavailable:
                reason = "No model is loaded; " + "; ".join(
                    f"{model} is unavailable: {why}" for model, why in sorted(view.unavailable.items())
                )
            body = {
                "status": "not_ready",
                "reason": reason,
                "progress": f"{len(loaded_of_preset)}/{len(active.models)}",
                **extra,
            }
            return 503, body
        return 200, {
            "status": "ready",
            "config": active.config,
            "loaded_models": sorted(served),
            "orchestration_mode": active.mode,
            **extra,
        }
