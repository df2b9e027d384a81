"""What route handlers receive: the services built once in create_app."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from api.catalog import Catalog
from api.fleet import FleetService
from api.metrics import FrontMetrics
from api.model_cards import ModelCards
from api.queue_view import QueueView
from api.service import ChatService
from presets.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Services:
    settings: Settings
    catalog: Catalog
    chat: ChatService
    fleet: FleetService
    models: ModelCards
    queue: QueueView
    metrics: FrontMetrics


async def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
