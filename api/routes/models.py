"""GET /v1/models, POST /v1/models/{model_id}/load and /unload."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from api.dependencies import Services, services
from api.errors import error_responses
from api.protocol import ModelCard, ModelList

router = APIRouter(responses=error_responses(401, 408, 413, 500, 503))


@router.get("/v1/models")
async def list_models(svc: Annotated[Services, Depends(services)]) -> ModelList:
    return ModelList(
        data=[ModelCard(**card) for card in await svc.models.cards()],
        config=svc.settings.config,
        orchestration_mode=svc.catalog.active.mode,
    )


@router.post("/v1/models/{model_id}/load", responses=error_responses(404, 409, 504))
async def load_model(model_id: str, svc: Annotated[Services, Depends(services)]) -> dict[str, object]:
    return await svc.fleet.load(model_id)


@router.post("/v1/models/{model_id}/unload", responses=error_responses(404, 504))
async def unload_model(model_id: str, svc: Annotated[Services, Depends(services)]) -> dict[str, object]:
    return await svc.fleet.unload(model_id)
