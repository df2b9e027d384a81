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
    status, body = await svc.models.readiness()
    return JSONResponse(body, status_code=status)
