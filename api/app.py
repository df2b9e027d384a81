"""create_app: the stateless front. Everything it knows about jobs lives in Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import ArqRedis
from fastapi import FastAPI
from redis.asyncio import ConnectionPool

from api.catalog import Catalog
from api.dependencies import Services
from api.errors import install_error_handlers
from api.events import EventHub
from api.routes import chat, health, models
from api.service import ChatService
from presets.settings import Settings, load_settings
from worker.protocol import arq_deserialize, arq_serialize


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = ArqRedis(
            ConnectionPool.from_url(settings.redis_url),
            job_serializer=arq_serialize,
            job_deserializer=arq_deserialize,
        )
        hub = EventHub(redis)
        await hub.start()
        catalog = Catalog(settings=settings, redis=redis)
        app.state.services = Services(
            settings=settings,
            catalog=catalog,
            chat=ChatService(settings=settings, redis=redis, hub=hub, catalog=catalog),
        )
        try:
            yield
        finally:
            await hub.stop()
            await redis.aclose(close_connection_pool=True)

    app = FastAPI(title="inference-service", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(health.router)
    return app


def main() -> None:
    import uvicorn

    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())
