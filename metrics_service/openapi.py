"""GET /openapi.json: the HTTP contract, with schemas generated from models.py."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import models
from .auth import guard_of
from .query import INTERVALS, MAX_BUCKETS, MAX_TIMEOUT
from .responses import JSONResponse
from .service import VERSION

Mode = Literal["validation", "serialization"]
REF = "#/components/schemas/{model}"
Refs = dict[tuple[Any, Mode], Any]  # (model, mode) -> {"$ref": ...}


class Doc(NamedTuple):
    summary: str
    responses: dict[int, tuple[str, type[BaseModel] | str | None]]
    params: tuple[dict[str, Any], ...] = ()
    body: type[BaseModel] | dict[str, Any] | None = None
    description: str = ""


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


FILTERS = (
    {
        **_query(
            "event",
            {"type": "array", "items": {"type": "string"}},
            "Event name; repeat the parameter to match any of several.",
        ),
        "style": "form",
        "explode": True,
    },
    _query("visitor_id", {"type": "string"}, "Exact visitor id."),
    _query("event_id", {"type": "string"}, "Exact client event id."),
    _query(
        "since",
        {"type": "string", "format": "date-time"},
        "ISO-8601; events whose `timestamp` is at or after it (naive means UTC).",
    ),
    _query(
        "until",
        {"type": "string", "format": "date-time"},
        "ISO-8601; events whose `timestamp` is at or before it (naive means UTC).",
    ),
    _query(
        "after",
        {"type": "integer"},
        "Only events with a greater seq: pass the `last_seq` read before a test.",
    ),
)
FILTER_NOTE = (
    "Filters combine with AND. `meta.<path>=<value>` (any number of them, dotted"
    " paths for nested objects) matches a metadata value by its string form:"
    ' `meta.step=2` matches 2 and "2", `meta.flag=true` matches true.'
    " Unknown parameters are rejected with 422."
)
BODY_ERRORS: dict[int, tuple[str, type[BaseModel] | str | None]] = {
    400: ("Malformed JSON or invalid UTF-8", models.ErrorBody),
    408: ("The body did not arrive in time", models.ErrorBody),
    413: ("The body is over the size limit", models.ErrorBody),
    415: ("Unsupported Content-Type or Content-Encoding", models.ErrorBody),
    422: ("An invalid event, with loc/msg per problem", models.ErrorBody),
    503: ("The sink cannot be written; nothing was stored", models.ErrorBody),
}
BAD_QUERY = (422, ("An unknown or invalid query parameter", models.ErrorBody))
EVENT_STREAM = "text/event-stream"

DOCS: dict[tuple[str, str], Doc] = {
    ("POST", "/api/metrics/event"): Doc(
        "Record one event",
        {202: ("Stored (or a duplicate ignored)", models.IngestResult), **BODY_ERRORS},
        body=models.BehaviorEvent,
        description="JSON, text/plain (sendBeacon) or no Content-Type are accepted.",
    ),
    ("POST", "/api/metrics/events"): Doc(
        "Record a batch of events, all or nothing",
        {202: ("Stored", models.BatchResult), **BODY_ERRORS},
        body={
            "oneOf": [
                {"type": "array", "items": {"$ref": REF.format(model="BehaviorEvent")}},
                {"$ref": REF.format(model="EventBatch")},
            ]
        },
        description='A JSON array, `{"events": [...]}`, or NDJSON (one event a line).',
    ),
    ("GET", "/api/metrics/behavior"): Doc(
        "Snapshot of the ring: counts and the newest events",
        {
            200: (
                "The snapshot; with filters, counts cover matches only",
                models.Snapshot,
            ),
            BAD_QUERY[0]: BAD_QUERY[1],
        },
        params=(
            _query(
                "limit",
                {"type": "integer", "minimum": 0, "default": 50},
                "How many of the newest events to return (clamped to capacity).",
            ),
            *FILTERS,
        ),
        description=FILTER_NOTE,
    ),
    ("DELETE", "/api/metrics/behavior"): Doc(
        "Empty the ring and its counters (never the file)",
        {200: ("Cleared", models.Cleared)},
        description="Global: parallel tests should isolate with `after` instead.",
    ),
    ("GET", "/api/metrics/behavior/health"): Doc(
        "Liveness and sink status",
        {200: ("Healthy", models.Health), 503: ("The sink is failing", models.Health)},
    ),
    ("GET", "/api/metrics/behavior/wait"): Doc(
        "Wait until enough matching events are in the ring",
        {
            200: ("`count` matches reached; events oldest first", models.WaitResult),
            408: ("Timed out; the matches so far, oldest first", models.WaitResult),
            BAD_QUERY[0]: BAD_QUERY[1],
            503: ("The service is shutting down", models.ErrorBody),
        },
        params=(
            _query(
                "count",
                {"type": "integer", "minimum": 1, "default": 1},
                "Matches needed.",
            ),
            _query(
                "timeout",
                {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT, "default": 5},
                "Seconds to wait, fractions allowed.",
            ),
            *FILTERS,
        ),
        description="Events already in the ring count. Woken by ingestion, no polling. "
        + FILTER_NOTE,
    ),
    ("GET", "/api/metrics/behavior/timeseries"): Doc(
        "Event counts per time bucket over the ring",
        {
            200: ("Buckets oldest first, empty ones included", models.Timeseries),
            422: (
                f"A bad parameter, or more than {MAX_BUCKETS} buckets",
                models.ErrorBody,
            ),
        },
        params=(
            _query(
                "interval",
                {"type": "string", "enum": list(INTERVALS), "default": "1m"},
                "Bucket width; buckets are aligned to the Unix epoch (UTC).",
            ),
            *FILTERS,
        ),
        description=FILTER_NOTE,
    ),
    ("GET", "/api/metrics/behavior/stream"): Doc(
        "Server-Sent Events: one `behavior` message per accepted event",
        {200: ("The event stream", EVENT_STREAM), BAD_QUERY[0]: BAD_QUERY[1]},
        params=(
            {
                "name": "Last-Event-ID",
                "in": "header",
                "schema": {"type": "integer"},
                "description": "Resume: first the ring's events after this seq.",
            },
            *FILTERS,
        ),
        description="`id: <seq>`, `event: behavior`, `data: <stored event>`; a comment"
        " every 15 s; a client 1000 events behind gets `event: reset` and the stream"
        " ends (reconnect with Last-Event-ID). " + FILTER_NOTE,
    ),
    ("GET", "/openapi.json"): Doc(
        "This document", {200: ("OpenAPI 3.1", "application/json")}
    ),
    ("GET", "/metrics"): Doc(
        "Prometheus metrics",
        {200: ("Prometheus text format", "text/plain")},
    ),
    ("GET", "/"): Doc("The live dashboard", {200: ("HTML page", "text/html")}),
    ("GET", "/tracker.js"): Doc(
        "The browser tracker", {200: ("JavaScript", "text/javascript")}
    ),
    ("GET", "/static/{name}"): Doc(
        "Dashboard assets",
        {
            200: ("The file", "application/octet-stream"),
            304: ("Not modified", None),
            404: ("No such asset", models.ErrorBody),
        },
        params=(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string"},
            },
        ),
    ),
}


def _schemas() -> tuple[Refs, dict[str, Any]]:
    wanted: set[tuple[type[BaseModel], Mode]] = {(models.EventBatch, "validation")}
    for doc in DOCS.values():
        if isinstance(doc.body, type):
            wanted.add((doc.body, "validation"))
        for _, content in doc.responses.values():
            if isinstance(content, type):
                wanted.add((content, "serialization"))
    refs, defs = models_json_schema(
        sorted(wanted, key=lambda item: item[0].__name__), ref_template=REF
    )
    return dict(refs), defs.get("$defs", {})


def _operation(method: str, path: str, doc: Doc, refs: Refs) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, (text, content) in sorted(doc.responses.items()):
        answer: dict[str, Any] = {"description": text}
        if isinstance(content, type):
            schema = refs[(content, "serialization")]
            answer["content"] = {"application/json": {"schema": schema}}
        elif content is not None:
            answer["content"] = {content: {"schema": {"type": "string"}}}
        responses[str(status)] = answer
    operation: dict[str, Any] = {"summary": doc.summary, "responses": responses}
    if doc.description:
        operation["description"] = doc.description
    if doc.params:
        operation["parameters"] = list(doc.params)
    if doc.body is not None:
        schema = (
            refs[(doc.body, "validation")] if isinstance(doc.body, type) else doc.body
        )
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    guard = guard_of(path) if "{" not in path else None
    if guard is not None:
        token = "METRICS_INGEST_TOKEN" if guard == "ingest" else "METRICS_READ_TOKEN"
        responses["401"] = {
            "description": f"Missing or wrong token (only when {token} is set)",
            "content": {
                "application/json": {
                    "schema": refs[(models.ErrorBody, "serialization")]
                }
            },
        }
        operation["security"] = [{}, {"bearer": []}, {"token": []}]
    return operation


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `routes`; a route missing from DOCS still appears."""
    refs, defs = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            doc = DOCS.get((method, route.path)) or Doc(
                route.name, {200: ("Success", None)}
            )
            paths.setdefault(route.path, {})[method.lower()] = _operation(
                method, route.path, doc, refs
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "metrics_service",
            "version": VERSION,
            "description": "A small, fast behavior-analytics collector."
            ' Every error body is `{"detail": ...}`.',
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "token": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }


async def openapi(request: Request) -> Response:
    state = request.app.state
    body: bytes | None = getattr(state, "openapi_document", None)
    if body is None:
        body = state.openapi_document = bytes(
            JSONResponse(document(request.app.routes)).body
        )
    return Response(body, media_type="application/json")
