"""create_app: the stateless front. Everything it knows about jobs lives in Redis."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import ArqRedis
from fastapi import FastAPI

from api.admission import Admission
from api.catalog import Catalog
from api.dependencies import Services
from api.errors import install_error_handlers
from api.events import EventHub
from api.fleet import FleetService
from api.metrics import FrontMetrics
from api.model_cards import ModelCards
from api.queue_view import QueueView
from api.routes import chat, health, metrics, models, queue
from api.security import install_guards
from api.server import server_options
from api.service import ChatService
from presets.errors import PresetsError
from presets.logs import configure_logging
from presets.registry import registry_from_settings
from presets.settings import Settings, load_settings
from presets.validation import validate_active
from worker.keys import Keys
from worker.protocol import arq_deserialize, arq_serialize
from worker.redis_client import create_pool


def create_app(settings: Settings | None = None) -> FastAPI:
    """The front for one settings object; raises ConfigError when the active preset is invalid."""
    settings = settings or load_settings()
    registry = registry_from_settings(settings)
    active = registry.resolve_active(settings)
    # Files live with the workers, possibly on other hosts: the front checks only the config.
    validate_active(active, registry, check_files=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = ArqRedis(
            create_pool(settings.redis_url, role="front"),
            job_serializer=arq_serialize,
            job_deserializer=arq_deserialize,
        )
        hub = EventHub(redis, keys=Keys(prefix=settings.key_prefix))
        await hub.start()
        catalog = Catalog(settings=settings, redis=redis, registry=registry, active=active)
        admission = Admission(
            redis,
            keys=Keys(prefix=settings.key_prefix),
            limit=settings.max_concurrent_requests,
            reject_when_full=settings.reject_when_full,
        )
        fleet = FleetService(catalog=catalog, redis=redis)
        queue_view = QueueView(redis=redis, catalog=catalog, admission=admission)
        front_metrics = FrontMetrics(
            redis=redis,
            keys=Keys(prefix=settings.key_prefix),
            queue=queue_view,
            models=registry.model_ids(),
            priority_levels=settings.priority_levels,
        )
        app.state.services = Services(
            settings=settings,
            catalog=catalog,
            chat=ChatService(settings=settings, redis=redis, hub=hub, catalog=catalog, admission=admission),
            fleet=fleet,
            models=ModelCards(catalog=catalog, fleet=fleet),
            queue=queue_view,
            metrics=front_metrics,
        )
        await front_metrics.start()
        try:
            yield
        finally:
            await front_metrics.stop()
            await hub.stop()
            await redis.aclose(close_connection_pool=True)

    app = FastAPI(title="inference-service", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    install_guards(app, settings)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(queue.router)
    app.include_router(metrics.router)
    return app


def main() -> None:
    import uvicorn

    settings = load_settings()
    configure_logging(settings)
    try:
        app = create_app(settings)
    except PresetsError as exc:
        print(f"front: {exc}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # configure_logging owns the handlers: uvicorn's lines go through them, in the same format.
        log_config=None,
        **server_options(settings),
    )
