from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from . import dashboard, endpoints, observability, openapi, query, stream
from .auth import AuthMiddleware
from .config import Config
from .errors import EXCEPTION_HANDLERS
from .limits import BodyTimeoutMiddleware
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
    # Outermost first. CORS must come before auth, so preflights are
    # answered without a token and 401s still carry the CORS headers.
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials=False,
            max_age=600,
        ),
        Middleware(
            AuthMiddleware,
            ingest_token=config.ingest_token,
            read_token=config.read_token,
        ),
        Middleware(BodyTimeoutMiddleware, timeout=config.body_timeout),
    ]


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
