"""Plain events: the ingest fast path, decoded and encoded by msgspec in C.

An event is plain when pydantic would take it unchanged: exact types, lengths in
range, nothing to strip, no control characters in `event`, no timestamp or sent_at.
One decode validates a whole body of them and one encode writes every stored body.
Anything else gets None here and goes the full way (ingest.check_events), which has
the final word and the messages, so the two paths never disagree on what is stored.
"""

from __future__ import annotations

from itertools import repeat
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from .collector import Group
from .speedups import native

# A 64-bit integer has at most 20 digits; orjson and msgspec disagree on longer ones
# (float / exact), so a body with 20 digits in a row goes the full way. translate()
# then a substring test is ~15x faster than searching for r"\d{20}".
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS = b"0" * 20

# orjson.dumps, which measures events on the full path, stops at 254 levels; a body
# with fewer brackets than this cannot be that deep.
_BRACKETS = 200


def python_long_digits(body: bytes) -> bool:
    """True when `body` has 20 or more digits in a row."""
    return _TWENTY_DIGITS in body.translate(_DIGITS_AS_ZERO)


long_digits = python_long_digits if native is None else native.long_digits


def python_bodies(encoded: bytes) -> tuple[list[bytes], int]:
    """encode_lines() output as each event's body (from `"event"` to its last "}"),
    and the longest one's length."""
    # Each line is `{"event":…}`; a raw newline is always escaped inside one, so
    # "\n{" splits them exactly.
    bodies = encoded[1:-1].split(b"\n{")
    return bodies, max(map(len, bodies))


_bodies = python_bodies if native is None else native.bodies


class PlainEvent(
    msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False
):
    # Declared in the stored order, which is the order they are encoded in; an
    # absent metadata or user_agent stays UNSET until group() fills it in.
    event: Annotated[str, Meta(min_length=1, max_length=64)]
    visitor_id: Annotated[str, Meta(min_length=6, max_length=64)]
    event_id: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    metadata: dict[str, Any] | UnsetType = UNSET
    user_agent: str | UnsetType | None = UNSET


class Envelope(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    events: list[PlainEvent]


_one = msgspec.json.Decoder(PlainEvent)
_many = msgspec.json.Decoder(list[PlainEvent])
_wrapped = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


# ValidationError is a DecodeError; bad UTF-8 raises UnicodeDecodeError.
_UNDECODABLE = (msgspec.DecodeError, ValueError, RecursionError)


def decode(body: bytes, max_batch: int) -> list[PlainEvent] | None:
    """A batch's events when all are plain: an array or `{"events": [...]}` of 1 to
    max_batch objects; else None (a single event is _single's)."""
    first = body[:1]
    try:
        if first == b"[":
            events = _many.decode(body)
        elif first == b"{":
            events = _wrapped.decode(body).events
        else:
            return None
    except _UNDECODABLE:
        return None
    if not 1 <= len(events) <= max_batch:
        return None
    return events


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
    received: bytes,
    stamp: str,
    ts: float,
    header_user_agent: str | None,
) -> Group | None:
    """The body's events as one group stamped `stamp`, when all are plain; else None."""
    if long_digits(body):
        return None
    if not batch:
        return _single(body, max_event_bytes, received, stamp, ts, header_user_agent)
    events = decode(body, max_batch)
    if events is None:
        return None
    names = [event.event for event in events]
    visitor_ids = [event.visitor_id for event in events]
    joined = "".join(names)
    # isprintable() is false for every control character (and a few others).
    if not (
        joined.isprintable()
        and _unstripped(names, joined)
        and _unstripped(visitor_ids, "".join(visitor_ids))
    ):
        return None
    for event in events:
        if event.metadata is UNSET:
            event.metadata = {}
        if event.user_agent is UNSET:
            event.user_agent = header_user_agent
    try:
        encoded = _encoder.encode_lines(events)
    except (msgspec.EncodeError, OverflowError):
        return None
    bodies, longest = _bodies(encoded)
    # The full path measures the event as orjson writes it, which can be longer
    # (1e+16 for 1e16): under half the limit, an event cannot be past it there.
    if 2 * longest + 32 > max_event_bytes:
        return None
    # Each level of nesting takes two bytes, so a short body cannot be too deep.
    if (
        longest > 2 * _BRACKETS
        and encoded.count(b"{") + encoded.count(b"[") > _BRACKETS
        and any(body.count(b"{") + body.count(b"[") > _BRACKETS for body in bodies)
    ):
        return None
    count = len(bodies)
    head = b'"timestamp":"%s",' % stamp.encode()
    return Group(
        received,
        list(repeat(ts, count)),
        names,
        visitor_ids,
        [event.event_id for event in events],
        list(repeat(head, count)),
        bodies,
    )


def _single(
    body: bytes,
    max_event_bytes: int,
    received: bytes,
    stamp: str,
    ts: float,
    header_user_agent: str | None,
) -> Group | None:
    """group() for one event, without the batch's lists and joins.

    The same rules as group(), written out for one value: sharing group()'s helpers
    measured ~3% more instructions per single-event request (callgrind).
    """
    if body[:1] != b"{":
        return None
    try:
        event = _one.decode(body)
    except _UNDECODABLE:
        return None
    name, visitor_id = event.event, event.visitor_id
    if not (
        name.isprintable() and name.strip() == name and visitor_id.strip() == visitor_id
    ):
        return None
    if event.metadata is UNSET:
        event.metadata = {}
    if event.user_agent is UNSET:
        event.user_agent = header_user_agent
    try:
        encoded = _encoder.encode(event)
    except (msgspec.EncodeError, OverflowError):
        return None
    if 2 * len(encoded) + 32 > max_event_bytes or (
        len(encoded) > 2 * _BRACKETS
        and encoded.count(b"{") + encoded.count(b"[") > _BRACKETS
    ):
        return None
    return Group(
        received,
        [ts],
        [name],
        [visitor_id],
        [event.event_id],
        [b'"timestamp":"%s",' % stamp.encode()],
        [encoded[1:]],
    )
