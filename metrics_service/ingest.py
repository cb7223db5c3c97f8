from __future__ import annotations

import datetime as dt
import json
import time
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from .collector import Group
from .errors import ApiError
from .models import BehaviorEvent
from .plain import long_digits

if TYPE_CHECKING:
    from .policy import Policy

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)

# text/plain is what sendBeacon and keepalive fetch send; form-urlencoded is what
# `curl -d` sends when the user forgets -H. The body is parsed as JSON either way.
ACCEPTED_TYPES = (
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
)
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
BATCH_TYPES = ACCEPTED_TYPES[:-1] + NDJSON_TYPES + ("",)
GZIP_WBITS = 16 + zlib.MAX_WBITS


def iso(moment: dt.datetime) -> str:
    """UTC ISO-8601 with millisecond precision and a Z, as JavaScript prints it."""
    return (
        moment.astimezone(UTC).replace(tzinfo=None).isoformat("T", "milliseconds") + "Z"
    )


class Received(NamedTuple):
    """The receive time: in integer microseconds, as Unix seconds, and as stored."""

    micros: int
    ts: float
    text: str
    iso: bytes

    @property
    def moment(self) -> dt.datetime:
        # Only events that carry timestamp or sent_at need the datetime.
        return EPOCH + dt.timedelta(microseconds=self.micros)


_last_iso: tuple[int, str, bytes] = (-1, "", b"")
_last_second: tuple[int, str] = (-1, "")


def received_now() -> Received:
    """Now, with the ISO text formatted once per millisecond rather than per event."""
    global _last_iso
    # Integer microseconds, so the millisecond key agrees exactly with the datetime.
    global _last_second
    micros = time.time_ns() // 1000
    millis = micros // 1000
    if _last_iso[0] != millis:
        seconds = millis // 1000
        if _last_second[0] != seconds:
            # "YYYY-MM-DDTHH:MM:SS" changes once a second; iso() costs ~1.7 us.
            moment = EPOCH + dt.timedelta(seconds=seconds)
            _last_second = (seconds, iso(moment)[:-5])
        text = f"{_last_second[1]}.{millis % 1000:03d}Z"
        _last_iso = (millis, text, text.encode())
    return Received(micros, micros / 1_000_000, _last_iso[1], _last_iso[2])


class Head(NamedTuple):
    """The request headers ingest needs, found in one pass (first occurrence wins)."""

    content_type: str | None
    content_encoding: str | None
    content_length: str | None
    user_agent: str | None


def read_head(headers: list[tuple[bytes, bytes]]) -> Head:
    content_type = encoding = length = user_agent = None
    for name, value in headers:
        if name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
        elif name == b"content-length" and length is None:
            length = value.decode("latin-1")
        elif name == b"user-agent" and user_agent is None:
            user_agent = value.decode("latin-1")
        elif name == b"content-encoding" and encoding is None:
            encoding = value.decode("latin-1")
    return Head(content_type, encoding, length, user_agent)


_media_types: dict[str | None, str] = {}


def media_type(head: Head) -> str:
    raw = head.content_type
    kind = _media_types.get(raw)
    if kind is None:
        kind = (raw or "").split(";", 1)[0].strip().lower()
        if len(_media_types) < 64:  # clients send a handful; odd ones are not kept
            _media_types[raw] = kind
    return kind


def content_encoding(head: Head) -> str:
    """ "gzip" or "" (none); anything else is refused before the body is read."""
    raw = (head.content_encoding or "").strip().lower()
    if raw in ("", "identity"):
        return ""
    if raw in ("gzip", "x-gzip"):
        return "gzip"
    raise ApiError(415, f"unsupported Content-Encoding {raw!r}; send gzip or none")


class Gunzip:
    """Inflates a gzip body piece by piece, never producing more than limit + 1 bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.fed = 0
        self._inflater = zlib.decompressobj(GZIP_WBITS)

    def feed(self, data: bytes) -> bytes:
        self.fed += len(data)
        parts: list[bytes] = []
        while data:
            room = self.limit - self.size + 1
            try:
                part = self._inflater.decompress(data, room)
            except zlib.error as exc:
                raise ApiError(400, f"body is not valid gzip: {exc}") from None
            self.size += len(part)
            if self.size > self.limit:
                # Inflating stops here, so a gzip bomb costs at most limit + 1 bytes.
                raise ApiError(
                    413,
                    "decompressed " + too_large(self.limit, self.size, at_least=True),
                )
            parts.append(part)
            if self._inflater.eof:
                # Concatenated gzip members are one valid gzip body.
                data = self._inflater.unused_data
                if data:
                    self._inflater = zlib.decompressobj(GZIP_WBITS)
            else:
                data = self._inflater.unconsumed_tail
        return b"".join(parts)

    def finish(self) -> None:
        if self.fed and not self._inflater.eof:
            raise ApiError(400, "body is not valid gzip: the stream is truncated")


async def read_body(head: Head, receive: Receive, limit: int) -> bytes:
    """The request body, decompressed; 413 as soon as it would pass `limit` bytes.

    For gzip the limit applies both to the bytes received and to the inflated body.
    Raises ClientDisconnect when the client leaves mid-body, as Request.stream() does.
    """
    gunzip = Gunzip(limit) if content_encoding(head) == "gzip" else None
    declared = head.content_length
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(413, too_large(limit, size))
    if gunzip is None:
        # The common case: the whole body in the first message, as the server
        # buffered it before starting the app.
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body: bytes = message.get("body", b"")
            if len(body) > limit:
                raise ApiError(413, too_large(limit, len(body), at_least=True))
            return body
        first = [message]
    else:
        first = []
    chunks: list[bytes] = []
    received = 0
    while True:
        message = first.pop() if first else await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            if chunk:
                received += len(chunk)
                if received > limit:
                    raise ApiError(413, too_large(limit, received, at_least=True))
                chunks.append(chunk if gunzip is None else gunzip.feed(chunk))
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    if gunzip is not None:
        gunzip.finish()
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def too_large(limit: int, size: int, *, at_least: bool = False) -> str:
    actual = f"at least {size:,}" if at_least else f"{size:,}"
    return f"body is {actual} bytes; the limit is {limit:,} bytes"


def parse_json(body: bytes, where: str = "") -> Any:
    if not body.strip():
        raise ApiError(400, f"{where}malformed JSON: the body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            # orjson says "surrogates not allowed" at char 0 for any bad byte: say where.
            try:
                body.decode()
            except UnicodeDecodeError as bad:
                raise ApiError(
                    400,
                    f"{where}body is not valid UTF-8: byte {bad.start:,} "
                    f"(0x{body[bad.start]:02x}) cannot be decoded",
                ) from None
            raise ApiError(400, f"{where}body is not valid UTF-8: {exc}") from None
        raise ApiError(400, f"{where}malformed JSON: {exc}") from None
    if long_digits(body):
        # orjson reads an integer past 64 bits as a float, silently dropping digits:
        # such bodies are read again by the standard library, which keeps them exact.
        _check_integers(body, where)
    return value


_INT_RANGE = range(-(2**63), 2**64)


def _check_integers(body: bytes, where: str) -> None:
    try:
        exact = json.loads(body)
    except (ValueError, RecursionError):
        return  # orjson accepted it; nothing here to add
    stack = [exact]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif type(item) is int and item not in _INT_RANGE:
            digits = str(item)
            shown = digits if len(digits) <= 30 else f"{digits[:27]}..."
            raise ApiError(
                422,
                f"{where}integer {shown} ({len(digits.lstrip('-'))} digits) does not "
                "fit in 64 bits and would lose precision; send it as a string",
            )


def parse_batch(body: bytes, kind: str, max_batch: int) -> list[Any]:
    """A JSON array, `{"events": [...]}` or NDJSON (blank lines skipped) as a list."""
    if kind in NDJSON_TYPES:
        return parse_ndjson(body, max_batch)
    try:
        data = parse_json(body)
    except ApiError:
        # sendBeacon cannot set an NDJSON type without a preflight, so NDJSON
        # often arrives as text/plain: several lines that are not one JSON value.
        if kind in ("text/plain", "") and len(body.strip().splitlines()) > 1:
            return parse_ndjson(body, max_batch)
        raise
    if isinstance(data, dict) and "events" in data:
        unknown = sorted(set(data) - {"events"})
        if unknown:
            raise ApiError(
                422, f"unknown field {unknown[0]!r} next to 'events'; send only events"
            )
        data = data["events"]
        if not isinstance(data, list):
            raise ApiError(422, f"'events' must be an array, got {type_name(data)}")
    elif not isinstance(data, list):
        raise ApiError(
            422,
            f'expected a JSON array of events, {{"events": [...]}} or NDJSON '
            f"(application/x-ndjson), got {type_name(data)}",
        )
    check_count(len(data), max_batch)
    return data


def parse_ndjson(body: bytes, max_batch: int) -> list[Any]:
    lines = [
        (number, line)
        for number, line in enumerate(body.split(b"\n"), 1)
        if line.strip()
    ]
    check_count(len(lines), max_batch)
    return [parse_json(line, f"line {number}: ") for number, line in lines]


def check_count(count: int, max_batch: int) -> None:
    if count == 0:
        raise ApiError(422, "the batch is empty; send at least one event")
    if count > max_batch:
        raise ApiError(
            422, f"batch has {count:,} events; the limit is {max_batch:,} events"
        )


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


def check_events(
    objs: list[Any], policy: Policy, max_event_bytes: int, *, batch: bool
) -> list[BehaviorEvent]:
    """Validate every event; all problems at once as one 422 (with `index` in a batch)."""
    problems: list[dict[str, Any]] = []
    events: list[BehaviorEvent] = []
    # BehaviorEvent.model_validate() is this plus ~0.5 us of argument checks per call.
    validate = BehaviorEvent.__pydantic_validator__.validate_python
    checks = policy.checks
    dumps = orjson.dumps
    for i, obj in enumerate(objs):
        index = i if batch else None
        if not isinstance(obj, dict):
            msg = f"expected a JSON object, got {type_name(obj)}"
            if not batch:
                raise ApiError(422, msg)
            problems.append({"index": i, "loc": [], "msg": msg, "type": "object_type"})
            continue
        try:
            size = len(dumps(obj))
        except orjson.JSONEncodeError as exc:
            problems.append(_at(index, [], f"cannot be stored as JSON: {exc}", "json"))
            continue
        if size > max_event_bytes:
            msg = (
                f"event is {size:,} bytes serialized; "
                f"the limit is {max_event_bytes:,} bytes"
            )
            problems.append(_at(index, [], msg, "event_too_large"))
            continue
        try:
            event: BehaviorEvent = validate(obj)
        except ValidationError as exc:
            problems.extend(error_items(exc, index))
            continue
        refused = policy.problems(event) if checks else None
        if refused:
            problems.extend(
                item if index is None else {"index": index, **item} for item in refused
            )
            continue
        events.append(event)
    if problems:
        raise ApiError(422, problems)
    return events


def _at(index: int | None, loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    item: dict[str, Any] = {"loc": loc, "msg": msg, "type": kind}
    return item if index is None else {"index": index, **item}


def to_group(
    events: list[BehaviorEvent],
    policy: Policy,
    *,
    received: Received,
    header_user_agent: str | None,
    batch: bool,
) -> tuple[Group, int]:
    """The events sampling keeps (redacted) as a group, and how many it dropped."""
    rows: list[tuple[float, str, str, str | None, bytes]] = []
    problems: list[dict[str, Any]] = []
    redacts, samples = policy.redacts, policy.samples
    for i, event in enumerate(events):
        try:
            row = to_row(
                policy.redact(event) if redacts else event,
                received=received,
                header_user_agent=header_user_agent,
            )
        except ApiError as exc:
            items = (
                exc.detail
                if isinstance(exc.detail, list)
                else [_at(None, [], str(exc.detail), "json")]
            )
            problems.extend({"index": i, **item} if batch else item for item in items)
            continue
        if not samples or policy.keep(event):
            rows.append(row)
    if problems:
        raise ApiError(422, problems)
    ts, names, visitor_ids, event_ids, bodies = (
        ([], [], [], [], []) if not rows else map(list, zip(*rows, strict=True))
    )
    group = Group(
        received.iso, ts, names, visitor_ids, event_ids, [b""] * len(rows), bodies
    )
    return group, len(events) - len(rows)


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


def to_row(
    event: BehaviorEvent, *, received: Received, header_user_agent: str | None
) -> tuple[float, str, str, str | None, bytes]:
    """ts, event, visitor_id, event_id and the stored body, from `"timestamp"` on."""
    if event.timestamp is None and event.sent_at is None:
        # The common case: the receive time, already formatted for this request.
        stamp, ts = received.text, received.ts
    else:
        timestamp = event.timestamp or received.moment
        if event.sent_at is not None:
            # Correct the client's clock as Segment does: shift by how far it was off.
            try:
                timestamp = timestamp + (received.moment - event.sent_at)
            except OverflowError:
                raise ApiError(
                    422,
                    [{"loc": ["sent_at"], "msg": "moves timestamp out of range"}],
                ) from None
        stamp, ts = iso(timestamp), timestamp.timestamp()
    if "user_agent" in event.model_fields_set:
        user_agent = event.user_agent
    else:
        user_agent = header_user_agent
    fields: dict[str, Any] = {
        "timestamp": stamp,
        "event": event.event,
        "visitor_id": event.visitor_id,
    }
    if event.event_id is not None:
        fields["event_id"] = event.event_id
    fields["metadata"] = event.metadata
    fields["user_agent"] = user_agent
    try:
        # msgspec, as for plain events, so every stored line is written alike.
        body = _encode(fields)
    except (msgspec.EncodeError, OverflowError) as exc:
        raise ApiError(422, f"metadata cannot be stored as JSON: {exc}") from None
    return ts, event.event, event.visitor_id, event.event_id, body[1:]


_encode = msgspec.json.Encoder().encode
