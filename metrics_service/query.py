from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .errors import ApiError
from .filters import parse_filters
from .hub import ShuttingDown, hub_of
from .responses import JSONResponse
from .service import Service

UTC = dt.UTC
MAX_TIMEOUT = 60.0
MAX_BUCKETS = 10_000
INTERVALS = {
    "1s": 1,
    "10s": 10,
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "1h": 3600,
    "1d": 86400,
}


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _invalid(name: str, msg: str) -> ApiError:
    return ApiError(422, [{"loc": ["query", name], "msg": msg}])


def _int_param(request: Request, name: str, default: int, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise _invalid(name, f"must be at least {minimum}")
    return value


def _timeout_param(request: Request) -> float:
    raw = request.query_params.get("timeout")
    if raw is None:
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        raise _invalid("timeout", f"expected seconds, got {raw!r}") from None
    if not 0 <= value <= MAX_TIMEOUT or math.isnan(value):
        raise _invalid("timeout", f"must be between 0 and {MAX_TIMEOUT:g} seconds")
    return value


async def wait(request: Request) -> Response:
    service = _service(request)
    filters = parse_filters(request.query_params, extra={"count", "timeout"})
    count = _int_param(request, "count", 1, 1)
    timeout = _timeout_param(request)
    # Scanning and registering happen in one loop step, so no entry falls between.
    existing = filters.scan(service.ring)
    try:
        done, events = await hub_of(service).wait(filters, count, existing, timeout)
    except ShuttingDown:
        raise ApiError(503, "the service is shutting down") from None
    body = {
        "matched": len(events),
        "events": [orjson.Fragment(entry.line) for entry in events],
    }
    return JSONResponse(body, 200 if done else 408)


def _bucket_start(index: int, width: int) -> str:
    moment = dt.datetime.fromtimestamp(index * width, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def timeseries(request: Request) -> Response:
    service = _service(request)
    filters = parse_filters(request.query_params, extra={"interval"})
    interval = request.query_params.get("interval", "1m")
    width = INTERVALS.get(interval)
    if width is None:
        raise _invalid("interval", f"expected one of {', '.join(INTERVALS)}")
    counts: dict[int, dict[str, int]] = {}
    for entry in filters.scan(service.ring):
        per_event = counts.setdefault(math.floor(entry.ts / width), {})
        per_event[entry.event] = per_event.get(entry.event, 0) + 1
    buckets: list[dict[str, Any]] = []
    if counts:
        first, last = min(counts), max(counts)
        if last - first + 1 > MAX_BUCKETS:
            raise _invalid(
                "interval",
                f"{last - first + 1} buckets of {interval} between the oldest and newest"
                f" event, more than {MAX_BUCKETS}; use a larger interval or since/until",
            )
        for index in range(first, last + 1):
            per_event = counts.get(index, {})
            buckets.append(
                {
                    "start": _bucket_start(index, width),
                    "total": sum(per_event.values()),
                    "by_event": dict(sorted(per_event.items())),
                }
            )
    return JSONResponse({"interval": interval, "buckets": buckets})
