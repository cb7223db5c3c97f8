from __future__ import annotations

import datetime as dt
import os

import orjson
from starlette.requests import Request
from starlette.responses import Response

from .collector import Outcome
from .errors import ApiError
from .filters import parse_filters
from .ingest import (
    ACCEPTED_TYPES,
    BATCH_TYPES,
    check_events,
    media_type,
    parse_batch,
    parse_json,
    read_body,
    to_records,
)
from .models import BehaviorEvent
from .responses import JSONResponse
from .service import VERSION, Service
from .sink import SinkError

UTC = dt.UTC


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def check_media_type(request: Request, allowed: tuple[str, ...]) -> None:
    kind = media_type(request)
    if kind not in allowed:
        names = ", ".join(t for t in allowed if t) + " or none"
        raise ApiError(415, f"unsupported Content-Type {kind!r}; send {names}")


async def ingest_event(request: Request) -> Response:
    service = service_of(request)
    config = service.config
    check_media_type(request, ACCEPTED_TYPES)
    body = await read_body(request, config.max_body_bytes)
    events = check_events(
        [parse_json(body)], service.policy, config.max_event_bytes, batch=False
    )
    outcome, sampled_out = await store(request, events, batch=False)
    return JSONResponse(
        {
            "ok": True,
            "stored": outcome.stored,
            "file": str(config.jsonl),
            "seq": outcome.first_seq,
            "duplicates": outcome.duplicates,
            "sampled_out": sampled_out,
        },
        202,
    )


async def ingest_batch(request: Request) -> Response:
    service = service_of(request)
    config = service.config
    check_media_type(request, BATCH_TYPES)
    body = await read_body(request, config.max_body_bytes)
    objs = parse_batch(body, media_type(request), config.max_batch)
    events = check_events(objs, service.policy, config.max_event_bytes, batch=True)
    outcome, sampled_out = await store(request, events, batch=True)
    return JSONResponse(
        {
            "ok": True,
            "stored": outcome.stored,
            "duplicates": outcome.duplicates,
            "sampled_out": sampled_out,
            "file": str(config.jsonl),
            "first_seq": outcome.first_seq,
            "last_seq": outcome.last_seq,
        },
        202,
    )


async def store(
    request: Request, events: list[BehaviorEvent], *, batch: bool
) -> tuple[Outcome, int]:
    """Redact, sample and submit valid events in one write; (outcome, sampled out)."""
    service = service_of(request)
    records, sampled_out = to_records(
        events,
        service.policy,
        received=dt.datetime.now(UTC),
        header_user_agent=request.headers.get("user-agent"),
        batch=batch,
    )
    service.sampled_out += sampled_out
    if not records:
        return Outcome(0, 0, None, None), sampled_out
    try:
        outcome = await service.collector.submit(records)
    except SinkError as exc:
        raise ApiError(503, str(exc)) from None
    return outcome, sampled_out


def parse_limit(request: Request, capacity: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return min(50, capacity)
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(
            422,
            [{"loc": ["query", "limit"], "msg": f"expected an integer, got {raw!r}"}],
        ) from None
    if limit < 0:
        raise ApiError(
            422, [{"loc": ["query", "limit"], "msg": "must not be negative"}]
        )
    return min(limit, capacity)


def reject_unknown_params(request: Request, known: set[str]) -> None:
    unknown = sorted(set(request.query_params.keys()) - known)
    if unknown:
        raise ApiError(
            422,
            [
                {"loc": ["query", name], "msg": f"unknown parameter {name!r}"}
                for name in unknown
            ],
        )


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
            "last_seq": service.collector.last_seq,
        }
    )


async def reset(request: Request) -> Response:
    service = service_of(request)
    cleared = service.ring.clear()
    return JSONResponse({"ok": True, "cleared": cleared})


async def health(request: Request) -> Response:
    service = service_of(request)
    config = service.config
    error = service.collector.error
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
