from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from metrics_service.http.errors import ApiError
from metrics_service.read.filters import Filters
from metrics_service.read.hub import QUEUE_LIMIT, Hub, RejectionPredicate
from metrics_service.read.query import invalid, parse_filters
from metrics_service.read.rejected import RejectionFilters
from metrics_service.service import Service
from metrics_service.store.chunk import Entry
from metrics_service.store.quarantine import Rejection
from metrics_service.store.ring import Ring

HEARTBEAT = 15.0
CHUNK = 500  # messages per write while sending the backlog
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def message(entry: Entry) -> bytes:
    # Stored lines are compact JSON: never a newline inside, so one data: line.
    return b"id: %d\nevent: behavior\ndata: %s\n\n" % (entry.seq, entry.line)


def _join(entries: Iterable[Entry]) -> bytes:
    return b"".join(message(entry) for entry in entries)


def rejected_message(found: Rejection) -> bytes:
    # No `id:`: a reconnecting EventSource resumes by event seq, never by record id.
    return b"event: rejected\ndata: %s\n\n" % found.line


def _in_order(
    refused: list[Rejection], places: list[int], entries: list[Entry]
) -> bytes:
    """Refusals and entries in the order they came: `places[i]` entries came before
    `refused[i]`."""
    parts: list[bytes] = []
    sent = 0
    for found, place in zip(refused, places, strict=True):
        if place > sent:
            parts.append(_join(entries[sent:place]))
            sent = place
        parts.append(rejected_message(found))
    parts.append(_join(entries[sent:]))
    return b"".join(parts)


async def events(
    hub: Hub,
    ring: Ring,
    filters: Filters,
    *,
    heartbeat: float = HEARTBEAT,
    limit: int = QUEUE_LIMIT,
    rejections: RejectionPredicate | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body: the ring's matches after `filters.after` (when resuming), then live
    ones, and live refusals matching `rejections` (when given).

    Ends with `event: reset` when the client fell `limit` events behind, and ends
    quietly when the hub closes.
    """
    # Subscribing and reading the backlog happen in one loop step: no gap, no repeat.
    sub = hub.subscribe(filters, limit, force=True, rejections=rejections)
    backlog = filters.scan(ring) if filters.after is not None else []
    last_sent = filters.after
    try:
        yield b"retry: 1000\n: connected\n\n"
        for start in range(0, len(backlog), CHUNK):
            yield _join(backlog[start : start + CHUNK])
        if backlog:
            last_sent = backlog[-1].seq
        del backlog
        while not sub.closed:
            if not sub.queue and not sub.rejections and not sub.overflowed:
                try:
                    await asyncio.wait_for(sub.wakeup.wait(), heartbeat)
                except TimeoutError:
                    yield b": heartbeat\n\n"
                    continue
            refused, places = sub.take_rejections()
            entries = sub.take()
            if refused:
                yield _in_order(refused, places, entries)
            elif entries:
                yield _join(entries)
            if entries:
                last_sent = entries[-1].seq
            if sub.overflowed:
                note = f"fell {limit} events behind; reconnect with Last-Event-ID"
                yield b'event: reset\ndata: {"reason":"%s","last_seq":%s}\n\n' % (
                    note.encode(),
                    b"null" if last_sent is None else b"%d" % last_sent,
                )
                return
    finally:
        hub.unsubscribe(sub)


def _resume_from(request: Request, filters: Filters) -> Filters:
    # EventSource reconnects to the same URL, so a `?after=` there is only where the
    # stream started; the Last-Event-ID header it adds says how far it really got.
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return filters
    try:
        after = int(raw)
    except ValueError:
        raise ApiError(
            422,
            [
                {
                    "loc": ["header", "last-event-id"],
                    "msg": f"expected a seq, got {raw!r}",
                }
            ],
        ) from None
    return dataclasses.replace(filters, after=after)


async def stream(request: Request) -> Response:
    service: Service = request.app.service
    params = request.query_params
    filters = _resume_from(request, parse_filters(params, extra={"rejected"}))
    rejections = None
    if params.get("rejected", "true") not in ("true", "false"):
        raise invalid("rejected", f"expected true or false, got {params['rejected']!r}")
    if params.get("rejected", "true") == "true" and service.quarantine.enabled:
        rejections = RejectionFilters.of_events(filters)
    if service.hub.full:
        hub = service.hub
        raise ApiError(503, hub.full_message(), {"Retry-After": "1"})
    body = events(service.hub, service.ring, filters, rejections=rejections)
    return StreamingResponse(body, media_type="text/event-stream", headers=HEADERS)
