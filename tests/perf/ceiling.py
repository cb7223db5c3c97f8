"""The framework's own ceiling: an empty Starlette POST endpoint that reads the body."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)


async def health(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


app = Starlette(
    routes=[
        Route("/api/metrics/event", accept, methods=["POST"]),
        Route("/api/metrics/behavior/health", health, methods=["GET"]),
    ]
)
