"""The app: the route table (routes.py) for Starlette's router, the front door as its
middleware, and create_app() with the lifespan that starts and stops the service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from metrics_service.http.frontdoor import FrontDoor
from metrics_service.routes import ENDPOINTS
from metrics_service.service import Service
from metrics_service.settings import Config

__all__ = ["App", "create_app", "routes"]


def routes() -> list[Route]:
    """ENDPOINTS for Starlette's router, one Route per path."""
    by_path: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path, {})[endpoint.method] = endpoint.handler
    out: list[Route] = []
    for path, handlers in by_path.items():
        for method, handler in handlers.items():
            out.append(Route(path, handler, methods=[method]))
    return out


class App(Starlette):
    """Starlette with the front door (http/frontdoor.py) as its whole middleware stack:
    CORS, tokens, the body deadline, errors, and the ingest endpoints' own lane."""

    endpoints = ENDPOINTS  # for GET /openapi.json

    def __init__(self, service: Service, **kwargs: Any) -> None:
        self.service = service
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> FrontDoor:
        return FrontDoor(self.router, config=self.service.config, endpoints=ENDPOINTS)


def create_app(config: Config | None = None) -> App:
    config = config or Config.from_env()
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = App(service, routes=routes(), lifespan=lifespan)
    app.state.service = service
    return app
