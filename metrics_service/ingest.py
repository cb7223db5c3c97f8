from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from .collector import Record
from .errors import ApiError
from .models import BehaviorEvent

UTC = dt.UTC

# text/plain is what sendBeacon and keepalive fetch send; form-urlencoded is what
# `curl -d` sends when the user forgets -H. The body is parsed as JSON either way.
ACCEPTED_TYPES = (
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
)


def iso(moment: dt.datetime) -> str:
    """UTC ISO-8601 with millisecond precision and a Z, as JavaScript prints it."""
    return (
        moment.astimezone(UTC).replace(tzinfo=None).isoformat("T", "milliseconds") + "Z"
    )


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it would pass `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(413, too_large(limit, size))
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise ApiError(413, too_large(limit, received, at_least=True))
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int, size: int, *, at_least: bool = False) -> str:
    actual = f"at least {size:,}" if at_least else f"{size:,}"
    return f"body is {actual} bytes; the limit is {limit:,} bytes"


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "malformed JSON: the body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            raise ApiError(400, f"body is not valid UTF-8: {exc}") from None
        raise ApiError(400, f"malformed JSON: {exc}") from None


def error_items(exc: ValidationError, index: int | None = None) -> list[dict[str, Any]]:
    """pydantic errors as `{"loc", "msg", "type"}` entries (plus `index` in a batch)."""
    items: list[dict[str, Any]] = []
    for err in exc.errors(
        include_url=False, include_context=False, include_input=False
    ):
        loc = list(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}: free-form data belongs in metadata"
        item: dict[str, Any] = {"loc": loc, "msg": msg, "type": err["type"]}
        if index is not None:
            item = {"index": index, **item}
        items.append(item)
    return items


def validate(obj: Any, index: int | None = None) -> BehaviorEvent:
    if not isinstance(obj, dict):
        where = "" if index is None else f"event {index}: "
        raise ApiError(422, f"{where}expected a JSON object, got {type_name(obj)}")
    try:
        return BehaviorEvent.model_validate(obj)
    except ValidationError as exc:
        raise ApiError(422, error_items(exc, index)) from None


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def to_record(
    event: BehaviorEvent, *, received: dt.datetime, header_user_agent: str | None
) -> Record:
    timestamp = event.timestamp or received
    if event.sent_at is not None:
        # Correct the client's clock as Segment does: shift by how far it was off.
        timestamp = timestamp + (received - event.sent_at)
    if "user_agent" in event.model_fields_set:
        user_agent = event.user_agent
    else:
        user_agent = header_user_agent
    fields: dict[str, Any] = {
        "timestamp": iso(timestamp),
        "event": event.event,
        "visitor_id": event.visitor_id,
    }
    if event.event_id is not None:
        fields["event_id"] = event.event_id
    fields["metadata"] = event.metadata
    fields["user_agent"] = user_agent
    try:
        body = orjson.dumps(fields)
    except orjson.JSONEncodeError as exc:
        raise ApiError(422, f"metadata cannot be stored as JSON: {exc}") from None
    return Record(
        ts=timestamp.timestamp(),
        event=event.event,
        visitor_id=event.visitor_id,
        event_id=event.event_id,
        received=iso(received).encode(),
        body=body[1:],
    )
