from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from . import dashboard, endpoints, observability, openapi, query, stream
from .config import Config
from .edge import Edge
from .errors import EXCEPTION_HANDLERS
from .service import Service

API = "/api/metrics"


def routes() -> list[Route]:
    return [
        Route(f"{API}/event", endpoints.ingest_event, methods=["POST"]),
        Route(f"{API}/events", endpoints.ingest_batch, methods=["POST"]),
        Route(f"{API}/behavior", endpoints.snapshot, methods=["GET"]),
        Route(f"{API}/behavior", endpoints.reset, methods=["DELETE"]),
        Route(f"{API}/behavior/health", endpoints.health, methods=["GET"]),
        Route(f"{API}/behavior/wait", query.wait, methods=["GET"]),
        Route(f"{API}/behavior/timeseries", query.timeseries, methods=["GET"]),
        Route(f"{API}/behavior/stream", stream.stream, methods=["GET"]),
        Route("/openapi.json", openapi.openapi, methods=["GET"]),
        Route("/metrics", observability.metrics, methods=["GET"]),
        Route("/", dashboard.dashboard, methods=["GET"]),
        Route("/tracker.js", dashboard.tracker, methods=["GET"]),
        Route("/static/{name}", dashboard.asset, methods=["GET"]),
    ]


def middleware(config: Config) -> list[Middleware]:
    # CORS, auth and the body deadline, in that order, as one layer (see edge.py).
    lanes = {
        f"{API}/event": endpoints.ingest_event,
        f"{API}/events": endpoints.ingest_batch,
    }
    return [Middleware(Edge, config=config, lanes=lanes)]


def create_app(config: Config | None = None) -> Starlette:
    config = config or Config.from_env()
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=routes(),
        middleware=middleware(config),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.service = service
    return app
