"""The snapshot (GET /api/metrics/behavior), its reset (DELETE) and health."""

from __future__ import annotations

import dataclasses
import os

import orjson
from starlette.requests import Request
from starlette.responses import Response

from metrics_service.http.responses import JSONResponse
from metrics_service.read.query import invalid, parse_filters
from metrics_service.service import VERSION, Service


def service_of(request: Request) -> Service:
    service: Service = request.app.service
    return service


def parse_limit(request: Request, capacity: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return min(50, capacity)
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit", f"expected an integer, got {raw!r}") from None
    if limit < 0:
        raise invalid("limit", "must not be negative")
    return min(limit, capacity)


def sink_bytes(service: Service) -> int:
    try:
        return os.stat(service.config.jsonl).st_size
    except OSError:
        return 0


async def snapshot(request: Request) -> Response:
    service = service_of(request)
    ring = service.ring
    filters = parse_filters(request.query_params, extra={"limit"})
    limit = parse_limit(request, ring.capacity)
    if filters.empty:
        total, counts = len(ring), ring.counts()
        newest = ring.newest(limit)
    elif filters.events is not None and dataclasses.replace(filters, events=None).empty:
        # Only `event=`: the live counts and the ring's event index answer it
        # without rebuilding every matching entry.
        live = ring.counts()
        counts = {name: live[name] for name in filters.events if name in live}
        total = sum(counts.values())
        newest = ring.newest(limit, events=filters.events)
    else:
        matching = filters.scan(ring)
        total, counts = len(matching), {}
        for entry in matching:
            counts[entry.event] = counts.get(entry.event, 0) + 1
        newest = matching[: -limit - 1 : -1] if limit else []
    by_event = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return JSONResponse(
        {
            "total": total,
            "by_event": [{"event": name, "count": n} for name, n in by_event],
            "last_events": [orjson.Fragment(entry.line) for entry in newest],
            "file_size_bytes": sink_bytes(service),
            "capacity": ring.capacity,
            "evicted": ring.evicted,
            "last_seq": service.writer.last_seq,
            "rejected": service.quarantine.recorded,
        }
    )


async def reset(request: Request) -> Response:
    service = service_of(request)
    cleared = service.ring.clear()
    service.quarantine.clear()
    return JSONResponse({"ok": True, "cleared": cleared})


async def health(request: Request) -> Response:
    service = service_of(request)
    config = service.config
    error = service.writer.error
    body = {
        "ok": error is None,
        "ring_capacity": service.ring.capacity,
        "ring_size": len(service.ring),
        "sink_exists": config.jsonl.exists(),
        "sink_path": str(config.jsonl),
        "sink_bytes": sink_bytes(service),
        "version": VERSION,
    }
    if error is not None:
        body["error"] = error
    return JSONResponse(body, 200 if error is None else 503)
