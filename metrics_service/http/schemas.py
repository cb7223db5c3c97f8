"""The shapes of the HTTP answers, for OpenAPI (the event itself is ingest/contract.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class StoredEvent(BaseModel):
    """One JSONL line, and one entry of `last_events`."""

    seq: int
    received_at: str
    timestamp: str
    event: str
    visitor_id: str
    event_id: str | None = Field(default=None, description="Only present when given.")
    metadata: dict[str, Any]
    user_agent: str | None


class EventBatch(BaseModel):
    events: list[dict[str, Any]]


class IngestResult(BaseModel):
    ok: bool
    stored: int
    file: str
    seq: int | None = Field(
        description="The event's seq; for a duplicate, null (nothing was stored)."
    )
    duplicates: int = 0
    sampled_out: int = 0


class BatchResult(BaseModel):
    ok: bool
    stored: int
    duplicates: int
    sampled_out: int = 0
    file: str
    first_seq: int | None
    last_seq: int | None


class EventCount(BaseModel):
    event: str
    count: int


class Snapshot(BaseModel):
    total: int
    by_event: list[EventCount]
    last_events: list[StoredEvent]
    file_size_bytes: int
    capacity: int
    evicted: int
    last_seq: int


class Health(BaseModel):
    ok: bool
    ring_capacity: int
    ring_size: int
    sink_exists: bool
    sink_path: str
    sink_bytes: int
    version: str
    error: str | None = None


class Cleared(BaseModel):
    ok: bool
    cleared: int


class WaitResult(BaseModel):
    matched: int
    events: list[StoredEvent]


class Bucket(BaseModel):
    start: str
    total: int
    by_event: dict[str, int]


class Timeseries(BaseModel):
    interval: str
    buckets: list[Bucket]


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None
    index: int | None = None


class ErrorBody(BaseModel):
    detail: str | list[ErrorItem]
