"""GET /api/metrics/behavior/wait: block until enough matching events are stored."""

from __future__ import annotations

import math

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from metrics_service.http.errors import ApiError
from metrics_service.http.responses import JSONResponse
from metrics_service.read.filters import invalid, parse_filters
from metrics_service.read.hub import Full, ShuttingDown

MAX_TIMEOUT = 60.0


def _int_param(
    request: Request, name: str, default: int, minimum: int, maximum: int
) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise invalid(name, f"must be at least {minimum}")
    if value > maximum:
        raise invalid(
            name,
            f"must be at most {maximum:,}, the ring's capacity"
            " (METRICS_RING_CAPACITY): no more events can ever be in the ring at once",
        )
    return value


def _timeout_param(request: Request) -> float:
    raw = request.query_params.get("timeout")
    if raw is None:
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        raise invalid("timeout", f"expected seconds, got {raw!r}") from None
    if not 0 <= value <= MAX_TIMEOUT or math.isnan(value):
        raise invalid("timeout", f"must be between 0 and {MAX_TIMEOUT:g} seconds")
    return value


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone (a GET's body, if any, is read and dropped)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a body that never finished (408): gone too
        return


async def wait(request: Request) -> Response:
    service = request.app.service
    filters = parse_filters(request.query_params, extra={"count", "timeout"})
    count = _int_param(request, "count", 1, 1, service.ring.capacity)
    timeout = _timeout_param(request)
    hub = service.hub
    if hub.full:
        raise ApiError(503, hub.full_message(), {"Retry-After": "1"})
    # Scanning and registering happen in one loop step, so no entry falls between.
    existing = filters.scan(service.ring)
    try:
        done, events = await hub.wait(
            filters, count, existing, timeout, lambda: disconnected(request.receive)
        )
    except ShuttingDown:
        raise ApiError(503, "the service is shutting down") from None
    except Full as exc:
        raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
    body = {
        "matched": len(events),
        "events": [orjson.Fragment(entry.line) for entry in events],
    }
    return JSONResponse(body, 200 if done else 408)
