"""GET /v1/queue."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.dependencies import Services, services
from api.errors import error_responses

router = APIRouter(responses=error_responses(401, 408, 413, 500, 503))


@router.get("/v1/queue")
async def queue(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
    return await svc.queue.snapshot()
