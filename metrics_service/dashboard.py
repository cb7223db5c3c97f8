from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from .errors import ApiError


async def dashboard(request: Request) -> Response:
    raise ApiError(501, "not built yet")


async def tracker(request: Request) -> Response:
    raise ApiError(501, "not built yet")
