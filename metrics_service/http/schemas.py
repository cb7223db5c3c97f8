"""The shapes of the HTTP answers, for OpenAPI (the event itself is ingest/contract.py).

Every answer model forbids other keys, so its JSON schema has
`additionalProperties: false`: tests/test_responses.py validates real answers against
GET /openapi.json, and a key the service sends but this file does not name fails it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

STORED_EXAMPLE = {
    "seq": 1,
    "received_at": "2026-11-21T23:17:55.619Z",
    "timestamp": "2026-11-21T23:17:55.619Z",
    "event": "page_view",
    "visitor_id": "visitor-123",
    "event_id": "4f1c2a9e-5b7d-4e2a-9c1f-0d3b6a8e7f21",
    "metadata": {"path": "/"},
    "user_agent": "curl/7.88.1",
}


def _answer(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


class StoredEvent(BaseModel):
    """One JSONL line, and one event in every answer that carries events. Keys in
    this order (store/line.py KEYS); `event_id` only when the client sent one."""

    model_config = _answer(STORED_EXAMPLE)

    seq: int = Field(description="Assigned by the collector: 1, 2, 3 … never reused.")
    received_at: str = Field(description="When the collector accepted it (UTC, Z).")
    instance: str | None = Field(
        default=None,
        description="The collector that wrote it (METRICS_INSTANCE); absent when unset.",
    )
    timestamp: str = Field(description="When it happened (UTC, Z), clock-corrected.")
    event: str
    visitor_id: str
    event_id: str | None = Field(
        default=None,
        description="The client's id, after visitor_id; absent when not given.",
    )
    test_id: str | None = Field(
        default=None,
        description="The per-test tag of the request that sent it, after event_id;"
        " absent when not sent.",
    )
    metadata: dict[str, Any] = Field(description="{} when not given.")
    user_agent: str | None


class EventBatch(BaseModel):
    events: list[dict[str, Any]]


class IngestResult(BaseModel):
    model_config = _answer(
        {
            "ok": True,
            "stored": 1,
            "file": "data/metrics.jsonl",
            "seq": 1,
            "duplicates": 0,
            "sampled_out": 0,
        },
        {
            "ok": True,
            "stored": 0,
            "file": "data/metrics.jsonl",
            "seq": None,
            "duplicates": 1,
            "sampled_out": 0,
        },
    )

    ok: bool
    stored: int = Field(description="1, or 0 for a duplicate or a sampled-out event.")
    file: str = Field(description="The sink's path, as configured.")
    seq: int | None = Field(
        description="The event's seq; null when nothing was stored (a duplicate of"
        " an earlier event_id, or sampled out): no seq is used up."
    )
    duplicates: int = 0
    sampled_out: int = 0


class BatchResult(BaseModel):
    model_config = _answer(
        {
            "ok": True,
            "stored": 2,
            "duplicates": 0,
            "sampled_out": 0,
            "file": "data/metrics.jsonl",
            "first_seq": 1,
            "last_seq": 2,
        }
    )

    ok: bool
    stored: int
    duplicates: int
    sampled_out: int = 0
    file: str
    first_seq: int | None = Field(description="null when nothing was stored.")
    last_seq: int | None = Field(description="null when nothing was stored.")


class EventCount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str
    count: int


class Snapshot(BaseModel):
    model_config = _answer(
        {
            "total": 1,
            "by_event": [{"event": "page_view", "count": 1}],
            "last_events": [STORED_EXAMPLE],
            "file_size_bytes": 241,
            "capacity": 500,
            "evicted": 0,
            "last_seq": 1,
            "rejected": 0,
        }
    )

    total: int = Field(description="Events in the ring (with filters: matching).")
    by_event: list[EventCount] = Field(
        description="Counts per event name, largest first (ties by name): a ranking,"
        " so a list, whose order every JSON client keeps. The timeseries' per-bucket"
        " `by_event` is an object instead: a lookup by name, where order means nothing."
    )
    last_events: list[StoredEvent] = Field(
        description="The newest `limit`, newest first."
    )
    file_size_bytes: int = Field(description="The sink's size now (0 if missing).")
    capacity: int = Field(description="METRICS_RING_CAPACITY: the most the ring holds.")
    evicted: int = Field(
        description="Events pushed out of the full ring since start-up or the last"
        " reset (still in the file)."
    )
    last_seq: int = Field(
        description="The highest seq assigned so far, whatever the filters; pass it as"
        " `after` to see only what comes next."
    )
    rejected: int = Field(
        description="Ingest requests refused (400, 413, 415, 422) and recorded in the"
        " quarantine since start-up or the last reset, whatever the filters; those"
        " pushed out of the full quarantine included. 0 when it is off."
    )


class Health(BaseModel):
    model_config = _answer(
        {
            "ok": True,
            "ring_capacity": 500,
            "ring_size": 1,
            "sink_exists": True,
            "sink_path": "data/metrics.jsonl",
            "sink_bytes": 241,
            "version": "0.1.0",
        }
    )

    ok: bool
    ring_capacity: int
    ring_size: int
    sink_exists: bool
    sink_path: str
    sink_bytes: int
    version: str
    error: str | None = Field(
        default=None, description="Only when ok is false: why the sink fails."
    )


class Cleared(BaseModel):
    model_config = _answer({"ok": True, "cleared": 1})

    ok: bool
    cleared: int = Field(description="How many events the ring held.")


REJECTION_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "received_at": "2026-11-21T23:17:55.619Z",
    "path": "/api/metrics/event",
    "status": 422,
    "detail": [
        {
            "loc": ["metadata", "amount"],
            "msg": "metadata.amount: -5 is less than the minimum of 0",
            "type": "schema",
            "path": "metadata.amount",
            "rule": "minimum",
        }
    ],
    "content_type": "application/json",
    "user_agent": "curl/7.88.1",
    "origin": None,
    "visitor_id": "visitor-123",
    "event": "checkout_completed",
    "body": '{"visitor_id":"visitor-123","event":"checkout_completed",'
    '"metadata":{"plan":"pro","amount":-5}}',
    "truncated": False,
}


class RejectionRecord(BaseModel):
    """One refused ingest request, as the quarantine keeps it and its file holds it
    (one line each, keys in this order)."""

    model_config = _answer(REJECTION_EXAMPLE)

    id: int = Field(description="The quarantine's own sequence: 1, 2, 3 …")
    received_at: str = Field(description="When it was refused (UTC, Z).")
    path: str = Field(description="The ingest path it was sent to.")
    status: int = Field(description="400, 413, 415 or 422.")
    detail: Any = Field(description="Exactly the error answer's `detail`.")
    content_type: str | None
    user_agent: str | None
    origin: str | None
    test_id: str | None = Field(
        default=None, description="Only when the request carried a test tag."
    )
    visitor_id: str | None = Field(
        description="The refused event's, when the body could be read (in a batch:"
        " the first event with a problem)."
    )
    event: str | None = Field(description="Its name, likewise.")
    body: str | None = Field(
        description="The first 4 KiB of the body after gzip/base64 decoding, as text"
        " (invalid UTF-8 replaced); JSON redacted (METRICS_REDACT_KEYS) and without"
        " SDK credentials (writeKey, api_key, token, api_secret). null when no body"
        " was read (413, 415)."
    )
    truncated: bool = Field(description="Whether `body` was cut at 4 KiB.")


class Rejections(BaseModel):
    model_config = _answer(
        {"total": 1, "rejections": [REJECTION_EXAMPLE], "last_id": 1}
    )

    total: int = Field(description="Records in the quarantine matching the filters.")
    rejections: list[RejectionRecord] = Field(
        description="The newest `limit`, newest first."
    )
    last_id: int = Field(
        description="The highest id assigned so far, whatever the filters: the"
        " `after` for what comes next."
    )


class WaitResult(BaseModel):
    model_config = _answer(
        {"matched": 1, "events": [STORED_EXAMPLE]},
        {"matched": 1, "rejections": [REJECTION_EXAMPLE]},
    )

    matched: int
    events: list[StoredEvent] = Field(
        default_factory=list, description="Oldest first (not with rejected=true)."
    )
    rejections: list[RejectionRecord] = Field(
        default_factory=list,
        description="With rejected=true, instead of events: the records, oldest first.",
    )


class Bucket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str
    total: int
    by_event: dict[str, int] = Field(
        description="Event name → count in this bucket, names sorted; an object"
        " (not the snapshot's ranked list) so a chart looks each name up."
    )


class Timeseries(BaseModel):
    model_config = _answer(
        {
            "interval": "1m",
            "buckets": [
                {
                    "start": "2026-03-01T10:00:00Z",
                    "total": 3,
                    "by_event": {"page_view": 2, "signup": 1},
                }
            ],
        }
    )

    interval: str
    buckets: list[Bucket] = Field(description="Oldest first, empty ones included.")
    clipped: int = Field(
        default=0,
        description="Only present when the span needed more buckets than the most"
        " allowed: events older than the first bucket shown.",
    )


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None
    index: int | None = None
    path: str | None = Field(
        default=None,
        description="A taxonomy schema's error: where, dotted (`metadata.amount`).",
    )
    rule: str | None = Field(
        default=None,
        description="A taxonomy schema's error: the keyword that failed (`minimum`).",
    )


class ErrorBody(BaseModel):
    model_config = _answer(
        {"detail": "malformed JSON: unexpected character at line 1 column 2"},
        {
            "detail": [
                {"loc": ["visitor_id"], "msg": "Field required", "type": "missing"}
            ]
        },
    )

    detail: str | list[ErrorItem]
