"""GET /v1/queue."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.dependencies import Services, services

router = APIRouter()


@router.get("/v1/queue")
async def queue(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    return await svc.queue.snapshot()
