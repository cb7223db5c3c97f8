from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .responses import JSONResponse

logger = logging.getLogger("metrics_service")


class ApiError(Exception):
    """An answer other than success; the body is always `{"detail": ...}`."""

    def __init__(
        self,
        status_code: int,
        detail: Any,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = dict(headers or {})


def count_rejection(request: Request, status: int) -> None:
    """Feed `rejected` on the app's Service (read by GET /metrics)."""
    rejected = getattr(getattr(request.app.state, "service", None), "rejected", None)
    if status >= 400 and isinstance(rejected, dict):
        rejected[status] = rejected.get(status, 0) + 1


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    count_rejection(request, exc.status_code)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    count_rejection(request, exc.status_code)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse(
        {"detail": exc.detail}, exc.status_code, headers=exc.headers or None
    )


async def server_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, 500)


EXCEPTION_HANDLERS = {
    ApiError: api_error,
    HTTPException: http_error,
    Exception: server_error,
}
