"""GET /health and /health/ready."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.dependencies import Services, services
from api.errors import error_responses
from api.protocol import Readiness

router = APIRouter(responses=error_responses(408, 413, 500))


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", responses={200: {"model": Readiness}, 503: {"model": Readiness}})
async def ready(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
    try:
        status, body = await svc.models.readiness()
    except (RedisConnectionError, RedisTimeoutError):
        status, body = 503, {"status": "not_ready", "reason": "Redis is not reachable"}
    return JSONResponse(body, status_code=status)
