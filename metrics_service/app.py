from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import dashboard, endpoints, observability, openapi, query, stream
from .config import Config
from .edge import Edge
from .errors import EXCEPTION_HANDLERS, server_error
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


class MetricsApp(Starlette):
    """Starlette, but a plain POST to an ingest endpoint (Edge.direct) goes straight to
    its lane with the body deadline, skipping the layers that have nothing to do for
    it: ~20% of an event's time on the server."""

    def __init__(self, *, config: Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        lanes = {
            f"{API}/event": endpoints.direct_event,
            f"{API}/events": endpoints.direct_batch,
        }
        self.edge = Edge(self.router, config=config, lanes=lanes, vary=True)
        self.service: Service | None = None  # set by create_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.edge.direct(scope):
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            await self.edge.deadline(scope, receive, send)
        except Exception:
            # What ServerErrorMiddleware does for the other requests.
            response = await server_error(Request(scope), Exception())
            # uvicorn refuses a second start if the answer had begun; keep the cause.
            with contextlib.suppress(RuntimeError):
                await response(scope, receive, send)
            raise


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

    app = MetricsApp(
        config=config,
        routes=routes(),
        middleware=middleware(config),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.service = service
    app.service = service  # for the ingest endpoints: no State lookup per request
    return app
