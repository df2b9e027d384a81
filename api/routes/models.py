"""GET /v1/models."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.dependencies import Services, services
from api.protocol import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models")
async def list_models(svc: Annotated[Services, Depends(services)]) -> ModelList:
    served = await svc.catalog.served_models()
    cards = [
        ModelCard(
            id=model,
            created=min(w.started_ms for w in workers) // 1000,
            status="loaded",
            context_length=max(w.context_length for w in workers),
            workers=len(workers),
        )
        for model, workers in sorted(served.items())
    ]
    return ModelList(data=cards, config=svc.settings.config, orchestration_mode=svc.settings.orchestration_mode)
