"""GET /health and /health/ready."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.dependencies import Services, services

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready")
async def ready(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    served = await svc.catalog.served_models()
    if not served:
        return JSONResponse({"status": "not_ready", "reason": "No model worker is ready"}, status_code=503)
    return JSONResponse(
        {
            "status": "ready",
            "config": svc.settings.config,
            "loaded_models": sorted(served),
            "orchestration_mode": svc.settings.orchestration_mode,
        }
    )
