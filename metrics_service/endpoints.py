from __future__ import annotations

import dataclasses
import os

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import plain
from .collector import Outcome
from .errors import ApiError
from .filters import parse_filters
from .ingest import (
    ACCEPTED_TYPES,
    BATCH_TYPES,
    NDJSON_TYPES,
    check_events,
    media_type,
    parse_batch,
    parse_json,
    read_body,
    read_head,
    received_now,
    to_group,
)
from .responses import JSONResponse
from .service import VERSION, Service
from .sink import SinkError


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def check_media_type(kind: str, allowed: tuple[str, ...]) -> None:
    if kind not in allowed:
        names = ", ".join(t for t in allowed if t) + " or none"
        raise ApiError(415, f"unsupported Content-Type {kind!r}; send {names}")


JSON_HEADERS = (b"content-type", b"application/json")
VARY_ORIGIN = (b"vary", b"Origin")


async def respond(
    send: Send, body: bytes, status: int = 202, *, vary: bool = False
) -> None:
    """What JSONResponse sends for a JSON `body`, without building a Response."""
    headers = [(b"content-length", b"%d" % len(body)), JSON_HEADERS]
    if vary:
        headers.append(VARY_ORIGIN)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Ingest:
    """POST /event and /events as a bare ASGI app: no Request or Response objects.

    An ApiError raised here is answered `{"detail": ...}` and counted by the app's
    ApiError handler: from Edge's lane for these paths, else ExceptionMiddleware.
    """

    def __init__(self, *, batch: bool, vary: bool = False) -> None:
        self.batch = batch
        # Served by Edge.direct(), nothing else adds the Vary: Origin CORS would.
        self.vary = vary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: Service = scope["app"].service
        config = service.config
        head = read_head(scope["headers"])
        kind = media_type(head)
        batch = self.batch
        check_media_type(kind, BATCH_TYPES if batch else ACCEPTED_TYPES)
        body = await read_body(head, receive, config.max_body_bytes)
        policy = service.policy
        received = received_now()
        group = None
        if policy.plain and kind not in NDJSON_TYPES:
            group = plain.group(
                body,
                batch=batch,
                max_batch=config.max_batch,
                max_event_bytes=config.max_event_bytes,
                received=received.iso,
                stamp=received.text,
                ts=received.ts,
                header_user_agent=head.user_agent,
            )
        sampled_out = 0
        if group is None:
            # The full way: pydantic, the policy, and every message a client may need.
            if batch:
                objs = parse_batch(body, kind, config.max_batch)
            else:
                objs = [parse_json(body)]
            events = check_events(objs, policy, config.max_event_bytes, batch=batch)
            group, sampled_out = to_group(
                events,
                policy,
                received=received,
                header_user_agent=head.user_agent,
                batch=batch,
            )
            service.sampled_out += sampled_out
        if group.bodies:
            try:
                outcome = await service.collector.enqueue(group)
            except SinkError as exc:
                raise ApiError(503, str(exc)) from None
        else:
            outcome = NOTHING
        if batch:
            content = {
                "ok": True,
                "stored": outcome.stored,
                "duplicates": outcome.duplicates,
                "sampled_out": sampled_out,
                "file": str(config.jsonl),
                "first_seq": outcome.first_seq,
                "last_seq": outcome.last_seq,
            }
            await respond(send, orjson.dumps(content), vary=self.vary)
            return
        seq = outcome.first_seq
        # The answer of every single event: formatted, not built as a dict and dumped.
        answer = _EVENT_ANSWER % (
            outcome.stored,
            service.file_json,
            b"null" if seq is None else b"%d" % seq,
            outcome.duplicates,
            sampled_out,
        )
        await respond(send, answer, vary=self.vary)


_EVENT_ANSWER = (
    b'{"ok":true,"stored":%d,"file":%s,"seq":%s,"duplicates":%d,"sampled_out":%d}'
)


NOTHING = Outcome(0, 0, None, None)
ingest_event = Ingest(batch=False)
ingest_batch = Ingest(batch=True)
direct_event = Ingest(batch=False, vary=True)
direct_batch = Ingest(batch=True, vary=True)


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
