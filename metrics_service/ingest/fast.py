"""The decoder's fast path: plain events, decoded and encoded by msgspec in C.

An event is plain when pydantic would take it unchanged: exact types, lengths in
range, nothing to strip, no control characters in `event`, no timestamp or sent_at.
One decode validates a whole body of them and one encode writes every stored body.
Anything else gets None here and goes the full way (ingest/decode.py), which has the
final word and the messages, so the two paths never disagree on what is stored.
"""

from __future__ import annotations

from itertools import repeat

import msgspec
from msgspec import UNSET

from metrics_service import _native
from metrics_service.ingest.contract import Envelope, PlainEvent, has_control_chars
from metrics_service.store.line import Group, escape_separators, head

# orjson.dumps, which measures events on the full path, stops at 254 levels; a body
# with fewer brackets than this cannot be that deep.
_BRACKETS = 200


_one = msgspec.json.Decoder(PlainEvent)
_many = msgspec.json.Decoder(list[PlainEvent])
_wrapped = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


# ValidationError is a DecodeError; bad UTF-8 raises UnicodeDecodeError.
_UNDECODABLE = (msgspec.DecodeError, ValueError, RecursionError)


def decode(body: bytes, *, batch: bool, max_batch: int) -> list[PlainEvent] | None:
    """The body's events when all are plain, else None: one object, or for a batch an
    array or `{"events": [...]}` of 1 to max_batch objects."""
    first = body[:1]
    try:
        if not batch:
            return [_one.decode(body)] if first == b"{" else None
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
    test_id: str | None = None,
) -> Group | None:
    """The body's events as one group stamped `stamp` (and `test_id`), when all are
    plain; else None."""
    if _native.long_digits(body):
        return None
    events = decode(body, batch=batch, max_batch=max_batch)
    if events is None:
        return None
    if len(events) == 1:
        # Most requests carry one event: the same rules, without the joins.
        name, visitor_id = events[0].event, events[0].visitor_id
        if (
            has_control_chars(name)
            or name.strip() != name
            or visitor_id.strip() != visitor_id
        ):
            return None
        names, visitor_ids = [name], [visitor_id]
    else:
        names = [event.event for event in events]
        visitor_ids = [event.visitor_id for event in events]
        joined = "".join(names)
        if has_control_chars(joined) or not (
            _unstripped(names, joined)
            and _unstripped(visitor_ids, "".join(visitor_ids))
        ):
            return None
    for event in events:
        if event.metadata is UNSET:
            event.metadata = {}
        if event.user_agent is UNSET:
            event.user_agent = header_user_agent
    if test_id is not None:
        for event in events:
            event.test_id = test_id
    try:
        if len(events) == 1:
            encoded = escape_separators(_encoder.encode(events[0]))
            bodies, longest = [encoded[1:]], len(encoded) - 1
        else:
            encoded = escape_separators(_encoder.encode_lines(events))
            bodies, longest = _native.bodies(encoded)
    except (msgspec.EncodeError, OverflowError):
        return None
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
    return Group(
        received,
        list(repeat(ts, count)),
        names,
        visitor_ids,
        [event.event_id for event in events],
        list(repeat(head(stamp), count)),
        bodies,
    )
