"""Every error answer: `{"detail": ...}` with its status, made in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import Scope

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


class BodyTimeout(ApiError):
    """The request body did not arrive within the deadline (http/deadline.py)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout:g} s",
            {"Connection": "close"},
        )


def as_api_error(exc: Exception, scope: Scope) -> ApiError:
    """The answer to `exc`: its own for ApiError and HTTPException, else a logged 500."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        return ApiError(exc.status_code, exc.detail, exc.headers)
    logger.error(
        "unhandled error on %s %s",
        scope.get("method"),
        scope.get("path"),
        exc_info=exc,
    )
    return ApiError(500, "internal error")


def count_rejection(scope: Scope, status: int) -> None:
    """Count a refusal by status on the app's Service (read by GET /metrics)."""
    app = scope.get("app")
    service = getattr(app, "service", None)
    rejected = getattr(service, "rejected", None)
    if status >= 400 and isinstance(rejected, dict):
        rejected[status] = rejected.get(status, 0) + 1


def encode(error: ApiError) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The error's body and headers (without Content-Length)."""
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in error.headers.items()
    ]
    if error.status_code in (204, 304):
        return b"", headers
    headers.append((b"content-type", b"application/json"))
    return orjson.dumps({"detail": error.detail}), headers
