"""GET /metrics: the fleet's metrics in Prometheus' text format, from any front."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.dependencies import Services, services
from api.errors import error_responses

router = APIRouter(responses=error_responses(401, 408, 413, 500, 503))


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(svc: Annotated[Services, Depends(services)]) -> Response:
    return Response(await svc.metrics.scrape(), media_type=CONTENT_TYPE_LATEST)
