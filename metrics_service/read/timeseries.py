"""GET /api/metrics/behavior/timeseries: event counts per time bucket over the ring."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from metrics_service.http.responses import JSONResponse
from metrics_service.read.query import invalid, parse_filters

UTC = dt.UTC
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


def _bucket_start(index: int, width: int) -> str:
    moment = dt.datetime.fromtimestamp(index * width, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def timeseries(request: Request) -> Response:
    service = request.app.service
    filters = parse_filters(request.query_params, extra={"interval"})
    interval = request.query_params.get("interval", "1m")
    width = INTERVALS.get(interval)
    if width is None:
        raise invalid("interval", f"expected one of {', '.join(INTERVALS)}")
    counts: dict[int, dict[str, int]] = {}
    for entry in filters.scan(service.ring):
        per_event = counts.setdefault(math.floor(entry.ts / width), {})
        per_event[entry.event] = per_event.get(entry.event, 0) + 1
    buckets: list[dict[str, Any]] = []
    clipped = 0
    if counts:
        first, last = min(counts), max(counts)
        if last - first + 1 > MAX_BUCKETS:
            # One event with a wrong clock (1970) must not break the answer: the newest
            # MAX_BUCKETS buckets are shown, and the events before them counted.
            first = last - MAX_BUCKETS + 1
            clipped = sum(
                sum(per_event.values())
                for index, per_event in counts.items()
                if index < first
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
    body: dict[str, Any] = {"interval": interval, "buckets": buckets}
    if clipped:
        body["clipped"] = clipped
    return JSONResponse(body)
