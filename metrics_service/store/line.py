"""The stored line, the one format of the JSONL file, the ring and every answer:

    {"seq":…,"received_at":"…",["instance":"…",]"timestamp":"…","event":…,
     "visitor_id":…,["event_id":…,]["test_id":…,]"metadata":{…},"user_agent":…}

seq, received_at, instance (METRICS_INSTANCE, when set) and test_id (the request's
per-test tag, ingest/test_tag.py, when sent) are the collector's; the rest is the
event's, in this order. A key in brackets is absent, not null, when it has no value.
"""

from __future__ import annotations

import re
from itertools import compress
from typing import Any, NamedTuple

import msgspec

# The keys of a stored line, in order; `instance`, `event_id` and `test_id` only
# when there is one.
KEYS = (
    "seq",
    "received_at",
    "instance",
    "timestamp",
    "event",
    "visitor_id",
    "event_id",
    "test_id",
    "metadata",
    "user_agent",
)
# seq, received_at (with the instance, see received_slot()), then a group's head and
# body for the event (see Group).
LINE = b'{"seq":%d,"received_at":"%s",%s%s'
# A collector's name, as settings.py's parser accepts it: nothing JSON escapes.
_INSTANCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


# U+2028, U+2029 and U+0085 are valid raw in JSON strings, but str.splitlines(),
# JavaScript before ES2019 and some log shippers take them for line ends: stored
# lines carry them escaped. In UTF-8 these bytes are those characters and nothing
# else, and outside strings JSON has no place for them. Lines written raw by older
# versions still read back: JSON parsers take both forms.
_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))
_NEL = (b"\xc2\x85", b"\\u0085")


def escape_separators(encoded: bytes) -> bytes:
    """`encoded` JSON with U+2028, U+2029 and U+0085 written as \\u escapes."""
    if encoded.isascii():  # the common case, checked a word at a time
        return encoded
    if b"\xe2\x80" in encoded:
        for raw, escaped in _SEPARATORS:
            encoded = encoded.replace(raw, escaped)
    if b"\xc2\x85" in encoded:
        encoded = encoded.replace(*_NEL)
    return encoded


def received_slot(received_at: bytes, instance: str | None) -> bytes:
    """What fills LINE's received_at slot: the time, then `","instance":"<name>` when
    the collector has a name, so the key follows received_at at no cost per line."""
    if instance is None:
        return received_at
    if not _INSTANCE.fullmatch(instance):
        raise ValueError(f"not a collector name: {instance!r}")
    return b'%s","instance":"%s' % (received_at, instance.encode())


def head(stamp: str) -> bytes:
    """A stored event's head: its `timestamp`, ISO-8601 with Z."""
    return b'"timestamp":"%s",' % stamp.encode()


class Body(msgspec.Struct, omit_defaults=True, gc=False):
    """An event's body, the keys after `timestamp`, as the slow path writes it."""

    event: str
    visitor_id: str
    event_id: str | None = None
    test_id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    user_agent: str | None = None


_encode_body = msgspec.json.Encoder().encode


def body(event: Body) -> bytes:
    """`event` from its first key to its closing brace; raises msgspec.EncodeError or
    OverflowError for metadata JSON cannot hold."""
    # omit_defaults would also drop an empty metadata and a null user_agent, which
    # every line carries: those two are written by hand after the struct's keys.
    return escape_separators(_encode_body(event))[1:]


class Group(NamedTuple):
    """One request's accepted events as columns, oldest first, waiting for their seqs.

    Each stored line is LINE % (seq, received, heads[i], bodies[i]): `heads[i]` is
    head(timestamp) and `bodies[i]` runs from `"event"` to the closing brace.
    """

    received: bytes  # received_at, ISO-8601 with Z
    ts: list[float]  # `timestamp` as Unix seconds
    events: list[str]
    visitor_ids: list[str]
    event_ids: list[str | None]
    heads: list[bytes]
    bodies: list[bytes]

    def select(self, keep: list[bool]) -> Group:
        """The group without the events whose `keep` is false."""
        return Group(
            self.received,
            list(compress(self.ts, keep)),
            list(compress(self.events, keep)),
            list(compress(self.visitor_ids, keep)),
            list(compress(self.event_ids, keep)),
            list(compress(self.heads, keep)),
            list(compress(self.bodies, keep)),
        )
