"""The decoder's fast path: plain events, decoded and encoded by msgspec in C.

An event is plain when pydantic would take it unchanged: exact types, lengths in
range, nothing to strip, no control characters in `event`, and timestamp and sent_at
absent, null or in the common ISO-8601 form (_MOMENT), as SDKs send them. One decode
validates a whole body of them and one encode writes every stored body.
Anything else gets None here and goes the full way (ingest/decode.py), which has the
final word and the messages, so the two paths never disagree on what is stored.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec
from msgspec import UNSET

from metrics_service import _native
from metrics_service.ingest.clock import UTC, Received, corrected
from metrics_service.ingest.contract import Envelope, PlainEvent, has_control_chars
from metrics_service.store.line import Group, escape_separators, head

# orjson.dumps, which measures events on the full path, stops at 254 levels; a body
# with fewer brackets than this cannot be that deep.
_BRACKETS = 200


_one = msgspec.json.Decoder(PlainEvent)
_many = msgspec.json.Decoder(list[PlainEvent])
_wrapped = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__

# ValidationError is a DecodeError; bad UTF-8 raises UnicodeDecodeError.
UNDECODABLE = (msgspec.DecodeError, ValueError, RecursionError)


def decode(body: bytes, *, max_batch: int) -> list[PlainEvent] | None:
    """A batch body's events when all are plain, else None: an array or
    `{"events": [...]}` of 1 to max_batch objects (one event: one())."""
    first = body[:1]
    try:
        if first == b"[":
            events = _many.decode(body)
        elif first == b"{":
            events = _wrapped.decode(body).events
        else:
            return None
    except UNDECODABLE:
        return None
    if not 1 <= len(events) <= max_batch:
        return None
    return events


def one(body: bytes) -> PlainEvent | None:
    """The body's event when it is one plain object, else None."""
    if body[:1] != b"{":
        return None
    try:
        return _one.decode(body)
    except UNDECODABLE:
        return None


# The form SDKs send (JavaScript's toISOString(), Python's isoformat()): a calendar
# date, a time with up to microseconds, and Z, an offset or none (UTC). In this form
# fromisoformat() and pydantic read the same instant; any other goes the full way.
_MOMENT = re.compile(
    r"\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?"
)
_fromisoformat = dt.datetime.fromisoformat


def _moment(text: str | None) -> dt.datetime | None:
    """`text` as an aware UTC datetime (None for None); raises ValueError when it is
    not in the common form, OverflowError when UTC is out of range."""
    if text is None:
        return None
    if _MOMENT.fullmatch(text) is None:
        raise ValueError(text)
    moment = _fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _stamps(
    events: list[PlainEvent], received: Received
) -> tuple[list[float], list[bytes]] | None:
    """Each event's Unix seconds and stored head, as decode.py to_row() computes them
    (clock.py corrected()), with timestamp and sent_at UNSET again; None when one is
    not in the common form or the correction leaves the range."""
    common = received.head
    seen: dict[tuple[str | None, str | None], tuple[float, bytes]] = {}
    ts: list[float] = []
    heads: list[bytes] = []
    for event in events:
        timestamp, sent_at = event.timestamp, event.sent_at
        if timestamp is UNSET:
            timestamp = None
        if sent_at is UNSET:
            sent_at = None
        key = (timestamp, sent_at)
        stamped = seen.get(key)
        if stamped is None:
            if timestamp is None and sent_at is None:
                stamped = (received.ts, common)
            else:
                try:
                    stamp, seconds = corrected(
                        _moment(timestamp), _moment(sent_at), received
                    )
                except (ValueError, OverflowError):
                    return None
                stamped = (seconds, head(stamp))
            seen[key] = stamped
        ts.append(stamped[0])
        heads.append(stamped[1])
        event.timestamp = event.sent_at = UNSET
    return ts, heads


def _unstripped(values: list[str], joined: str) -> bool:
    """True when no value has whitespace to strip; `joined` is "".join(values)."""
    parts = joined.split(maxsplit=1)
    if len(parts) == 1 and len(parts[0]) == len(joined):
        return True  # no whitespace anywhere, the common case
    # Python strips every character pydantic strips (and a few more), so no change
    # here means no change there either.
    return all(map(str.__eq__, map(str.strip, values), values))


def group(
    body: bytes,
    *,
    batch: bool,
    max_batch: int,
    max_event_bytes: int,
    received: Received,
    header_user_agent: str | None,
    test_id: str | None = None,
) -> Group | None:
    """The body's events as one group stamped with their time (and `test_id`), when
    all are plain; else None."""
    if _native.long_digits(body):
        return None
    if not batch:  # most requests: straight to _single(), without the lists
        event = one(body)
        if event is None:
            return None
        return _single(event, max_event_bytes, received, header_user_agent, test_id)
    events = decode(body, max_batch=max_batch)
    if events is None:
        return None
    return finish(
        events,
        max_event_bytes=max_event_bytes,
        received=received,
        header_user_agent=header_user_agent,
        test_id=test_id,
    )


_as_events = msgspec.convert


def convert(objs: list[dict[str, Any]]) -> list[PlainEvent] | None:
    """Events already decoded (the SDK formats' mapped events) as PlainEvents, checked
    as decode() checks a body; None when one is not plain. Their integers must fit in
    64 bits, as ingest/decode.py parse_json() makes sure."""
    try:
        return _as_events(objs, list[PlainEvent])
    except (msgspec.ValidationError, RecursionError):
        return None


def finish(
    events: list[PlainEvent],
    *,
    max_event_bytes: int,
    received: Received,
    header_user_agent: str | None,
    test_id: str | None = None,
) -> Group | None:
    """Decoded events as one group stamped with their time (and `test_id`), when all
    are plain; else None."""
    if len(events) == 1:
        return _single(events[0], max_event_bytes, received, header_user_agent, test_id)
    names = [event.event for event in events]
    visitor_ids = [event.visitor_id for event in events]
    joined = "".join(names)
    if has_control_chars(joined) or not (
        _unstripped(names, joined) and _unstripped(visitor_ids, "".join(visitor_ids))
    ):
        return None
    timed = False
    for event in events:
        if event.metadata is UNSET:
            event.metadata = {}
        if event.user_agent is UNSET:
            event.user_agent = header_user_agent
        if event.timestamp is not UNSET or event.sent_at is not UNSET:
            timed = True
    count = len(events)
    if timed:
        stamps = _stamps(events, received)
        if stamps is None:
            return None
        ts, heads = stamps
    else:
        ts = [received.ts] * count
        heads = [received.head] * count
    if test_id is not None:
        for event in events:
            event.test_id = test_id
    try:
        encoded = escape_separators(_encoder.encode_lines(events))
        bodies, longest = _native.bodies(encoded)
    except (msgspec.EncodeError, OverflowError, RecursionError):
        # RecursionError: metadata nested deeper than msgspec writes, which the SDK
        # lanes' readers can hand over; the full path refuses it.
        return None
    # The full path measures the event as orjson writes it, which can be longer
    # (1e+16 for 1e16): under half the limit, an event cannot be past it there. The
    # full path also counts `"timestamp":"…"` and `"sent_at":"…"`, under 48 bytes each.
    if 2 * longest + 32 + (96 if timed else 0) > max_event_bytes:
        return None
    # Each level of nesting takes two bytes, so a short body cannot be too deep.
    if (
        longest > 2 * _BRACKETS
        and encoded.count(b"{") + encoded.count(b"[") > _BRACKETS
        and any(body.count(b"{") + body.count(b"[") > _BRACKETS for body in bodies)
    ):
        return None
    return _new(
        Group,
        (
            received.iso,
            ts,
            names,
            visitor_ids,
            [event.event_id for event in events],
            heads,
            bodies,
        ),
    )


def _single(
    event: PlainEvent,
    max_event_bytes: int,
    received: Received,
    header_user_agent: str | None,
    test_id: str | None,
) -> Group | None:
    """finish() for one event, most requests: the same rules, without the joins."""
    name, visitor_id = event.event, event.visitor_id
    if (
        has_control_chars(name)
        or name.strip() != name
        or visitor_id.strip() != visitor_id
    ):
        return None
    if event.metadata is UNSET:
        event.metadata = {}
    if event.user_agent is UNSET:
        event.user_agent = header_user_agent
    timed = event.timestamp is not UNSET or event.sent_at is not UNSET
    if timed:
        stamps = _stamps([event], received)
        if stamps is None:
            return None
        ts, heads = stamps
    else:
        ts, heads = [received.ts], [received.head]
    if test_id is not None:
        event.test_id = test_id
    try:
        encoded = _encoder.encode(event)
    except (msgspec.EncodeError, OverflowError, RecursionError):
        return None
    if not encoded.isascii():  # only then can it hold a separator to escape
        encoded = escape_separators(encoded)
    body = encoded[1:]
    # The limits as finish() applies them (see there).
    if 2 * len(body) + 32 + (96 if timed else 0) > max_event_bytes:
        return None
    if len(body) > 2 * _BRACKETS and body.count(b"{") + body.count(b"[") > _BRACKETS:
        return None
    return _new(
        Group,
        (received.iso, ts, [name], [visitor_id], [event.event_id], heads, [body]),
    )
