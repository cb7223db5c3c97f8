"""The route table: every path, its handler, its guard (ingest/read/open) and its
OpenAPI description. app.py serves it; http/openapi.py documents it."""

from __future__ import annotations

from metrics_service.http import openapi
from metrics_service.http.openapi import (
    BAD_QUERY,
    BODY_ERRORS,
    EVENT_STREAM,
    FILTER_NOTE,
    FILTERS,
    REF,
    Doc,
    Endpoint,
    query,
)
from metrics_service.http.schemas import (
    BatchResult,
    Cleared,
    ErrorBody,
    Health,
    IngestResult,
    Rejections,
    Snapshot,
    Timeseries,
    WaitResult,
)
from metrics_service.ingest.contract import BehaviorEvent
from metrics_service.ingest.endpoint import Ingest
from metrics_service.ingest.formats import ENDPOINTS as SDK_ENDPOINTS
from metrics_service.read import dashboard, prometheus, rejected, snapshot, stream
from metrics_service.read.timeseries import INTERVALS, MAX_BUCKETS, timeseries
from metrics_service.read.wait import MAX_TIMEOUT, wait

API = "/api/metrics"
REJECTION_FILTERS = (
    query(
        "status",
        {"type": "array", "items": {"type": "integer"}},
        "The refusal's HTTP status (400, 413, 415, 422); repeat for any of several.",
    ),
    {
        **query(
            "event",
            {"type": "array", "items": {"type": "string"}},
            "The refused event's name, when its body could be read; repeat for any"
            " of several.",
        ),
        "style": "form",
        "explode": True,
    },
    query("visitor_id", {"type": "string"}, "The refused event's visitor id."),
    query("test_id", {"type": "string"}, "The test tag the request carried."),
    query("after", {"type": "integer"}, "Only records with a greater id."),
)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        f"{API}/event",
        Ingest(batch=False),
        "ingest",
        Doc(
            "Record one event",
            {202: ("Stored (or a duplicate ignored)", IngestResult), **BODY_ERRORS},
            body=BehaviorEvent,
            description="JSON, text/plain (sendBeacon) or no Content-Type are accepted.",
        ),
    ),
    Endpoint(
        "POST",
        f"{API}/events",
        Ingest(batch=True),
        "ingest",
        Doc(
            "Record a batch of events, all or nothing",
            {202: ("Stored", BatchResult), **BODY_ERRORS},
            body={
                "oneOf": [
                    {
                        "type": "array",
                        "items": {"$ref": REF.format(model="BehaviorEvent")},
                    },
                    {"$ref": REF.format(model="EventBatch")},
                ]
            },
            description='A JSON array, `{"events": [...]}`, or NDJSON (one event a line).',
        ),
    ),
    Endpoint(
        "GET",
        f"{API}/behavior",
        snapshot.snapshot,
        "read",
        Doc(
            "Snapshot of the ring: counts and the newest events",
            {
                200: (
                    "The snapshot; with filters, counts cover matches only",
                    Snapshot,
                ),
                BAD_QUERY[0]: BAD_QUERY[1],
            },
            params=(
                query(
                    "limit",
                    {"type": "integer", "minimum": 0, "default": 50},
                    "How many of the newest events to return (clamped to capacity).",
                ),
                *FILTERS,
            ),
            description=FILTER_NOTE,
        ),
    ),
    Endpoint(
        "DELETE",
        f"{API}/behavior",
        snapshot.reset,
        "read",
        Doc(
            "Empty the ring, its counters and the quarantine (never a file)",
            {200: ("Cleared; `cleared` counts the ring's events", Cleared)},
            description="Global: parallel tests should isolate with `after` instead.",
        ),
    ),
    Endpoint(
        "GET",
        f"{API}/behavior/rejected",
        rejected.rejected,
        "read",
        Doc(
            "The quarantine: refused ingest requests, newest first",
            {
                200: ("The matching records, newest first", Rejections),
                BAD_QUERY[0]: BAD_QUERY[1],
            },
            params=(
                query(
                    "limit",
                    {"type": "integer", "minimum": 0, "default": 50},
                    "How many of the newest records to return (clamped to"
                    " METRICS_REJECT_CAPACITY).",
                ),
                *REJECTION_FILTERS,
            ),
            description="Every 400, 413, 415 and 422 of an ingest endpoint, kept in"
            " memory (METRICS_REJECT_CAPACITY) and in `<stem>.rejected.jsonl`."
            " Filters combine with AND. `status`, `event`, `visitor_id` and `test_id`"
            " take the operators of the event filters (`__gt`, `__gte`, `__lt`,"
            " `__lte`, `__ne`, `__in`, `__prefix`, `__contains`, `__exists`, `__eq`):"
            " `status__gte=413`, `event__prefix=checkout`. A record whose event or"
            " visitor could not be read lacks that key. Unknown parameters and"
            " unknown operators are rejected with 422.",
        ),
    ),
    Endpoint(
        "DELETE",
        f"{API}/behavior/rejected",
        rejected.clear,
        "read",
        Doc(
            "Empty the quarantine (never its file)",
            {200: ("Cleared; `cleared` counts the records", Cleared)},
        ),
    ),
    Endpoint(
        "GET",
        f"{API}/behavior/health",
        snapshot.health,
        "open",
        Doc(
            "Liveness and sink status",
            {200: ("Healthy", Health), 503: ("The sink is failing", Health)},
        ),
    ),
    Endpoint(
        "GET",
        f"{API}/behavior/wait",
        wait,
        "read",
        Doc(
            "Wait until enough matching events are in the ring, or settle an assertion",
            {
                200: (
                    "`count` matches reached (and, with exactly, no more during"
                    " `settle`); with absent, none arrived; with sequence, the events"
                    " forming it. Oldest first",
                    WaitResult,
                ),
                408: (
                    "Timed out; the matches so far (with sequence, every match of"
                    " its names), oldest first",
                    WaitResult,
                ),
                409: (
                    "absent: the matching events that are or came in the ring;"
                    " exactly: every match, more than `count`",
                    WaitResult,
                ),
                BAD_QUERY[0]: BAD_QUERY[1],
                503: ("The service is shutting down", ErrorBody),
            },
            params=(
                query(
                    "count",
                    {"type": "integer", "minimum": 1, "default": 1},
                    "Matches needed (at most the ring's capacity).",
                ),
                query(
                    "timeout",
                    {
                        "type": "number",
                        "minimum": 0,
                        "maximum": MAX_TIMEOUT,
                        "default": 5,
                    },
                    "Seconds to wait, fractions allowed.",
                ),
                query(
                    "absent",
                    {"type": "boolean", "default": False},
                    "Expect no match: 200 after `timeout` when none is in the ring or"
                    " arrives, 409 with them as soon as one does. Not with count,"
                    " exactly, settle, sequence or per.",
                ),
                query(
                    "exactly",
                    {"type": "boolean", "default": False},
                    "Once `count` matches are in, wait `settle` seconds more: 409 with"
                    " every match when more than `count` came.",
                ),
                query(
                    "settle",
                    {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT},
                    "Seconds of quiet after `count` with exactly=true (at most"
                    " `timeout`; default 0: only what is already in).",
                ),
                query(
                    "sequence",
                    {"type": "string"},
                    "Comma-separated event names: 200 once matches with these names"
                    " arrived in this order (others may come between). Replaces"
                    " `event`; not with count or exactly.",
                ),
                query(
                    "per",
                    {"type": "string"},
                    "With sequence: `visitor_id` or `meta.<path>`; the whole sequence"
                    " must come from one value of it.",
                ),
                query(
                    "rejected",
                    {"type": "boolean", "default": False},
                    "Wait for refused ingest requests (the quarantine's records)"
                    " instead of events, matched by status, event, visitor_id,"
                    " test_id (each with its operators) and after (a record id);"
                    " with count, timeout and"
                    " absent, nothing else. The answer holds `rejections`.",
                ),
                query(
                    "status",
                    {"type": "array", "items": {"type": "integer"}},
                    "With rejected=true: the refusal's status; repeat for several.",
                ),
                *FILTERS,
            ),
            description="Events already in the ring count. Woken by ingestion, no "
            "polling. " + FILTER_NOTE,
        ),
    ),
    Endpoint(
        "GET",
        f"{API}/behavior/timeseries",
        timeseries,
        "read",
        Doc(
            "Event counts per time bucket over the ring",
            {
                200: ("Buckets oldest first, empty ones included", Timeseries),
                422: (
                    f"A bad parameter, or more than {MAX_BUCKETS} buckets",
                    ErrorBody,
                ),
            },
            params=(
                query(
                    "interval",
                    {"type": "string", "enum": list(INTERVALS), "default": "1m"},
                    "Bucket width; buckets are aligned to the Unix epoch (UTC).",
                ),
                *FILTERS,
            ),
            description=FILTER_NOTE,
        ),
    ),
    Endpoint(
        "GET",
        f"{API}/behavior/stream",
        stream.stream,
        "read",
        Doc(
            "Server-Sent Events: one `behavior` message per accepted event",
            {200: ("The event stream", EVENT_STREAM), BAD_QUERY[0]: BAD_QUERY[1]},
            params=(
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "schema": {"type": "integer"},
                    "description": "Resume: first the ring's events after this seq.",
                },
                query(
                    "rejected",
                    {"type": "boolean", "default": True},
                    "Also send each refused ingest request as it happens, as `event:"
                    " rejected` with the quarantine's record (no `id:`); matched by"
                    " the `event`, `visitor_id` and `test_id` filters only.",
                ),
                *FILTERS,
            ),
            description="`id: <seq>`, `event: behavior`, `data: <stored event>`; a"
            " comment every 15 s; a client 1000 events behind gets `event: reset` and"
            " the stream ends (reconnect with Last-Event-ID). " + FILTER_NOTE,
        ),
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        openapi.openapi,
        "open",
        Doc("This document", {200: ("OpenAPI 3.1", "application/json")}),
    ),
    Endpoint(
        "GET",
        "/metrics",
        prometheus.metrics,
        "read",
        Doc("Prometheus metrics", {200: ("Prometheus text format", "text/plain")}),
    ),
    Endpoint(
        "GET",
        "/",
        dashboard.dashboard,
        "open",
        Doc("The live dashboard", {200: ("HTML page", "text/html")}),
    ),
    Endpoint(
        "GET",
        "/tracker.js",
        dashboard.tracker,
        "open",
        Doc("The browser tracker", {200: ("JavaScript", "text/javascript")}),
    ),
    Endpoint(
        "GET",
        "/static/{name}",
        dashboard.asset,
        "open",
        Doc(
            "Dashboard assets",
            {
                200: ("The file", "application/octet-stream"),
                304: ("Not modified", None),
                404: ("No such asset", ErrorBody),
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
    ),
    *SDK_ENDPOINTS,
)
