"""The event contract, declared once: BehaviorEvent (pydantic, the public model and the
full path's judge), and PlainEvent, the fast decoder's msgspec struct derived from it."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

UTC = dt.UTC


# C0, DEL and C1; the bidi controls (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069),
# which reorder the text around them on a terminal or a page; the zero-width and
# invisible characters (U+180E, U+200B-U+200D, U+2060-U+2064, U+FEFF), which make two
# names look alike; and the line and paragraph separators U+2028/U+2029. Found by one
# regex search rather than a per-character loop.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e"
    "\u2060-\u2064\u2066-\u2069\ufeff]"
)
CONTROL_MESSAGE = (
    "must not contain control characters (C0, C1), bidi controls "
    "or zero-width characters"
)


def has_control_chars(text: str) -> bool:
    """The rule for event names, on both paths."""
    # Every character _CONTROL names is unprintable (tests/test_decode.py checks it),
    # and isprintable() is a plain scan: the search runs only for the rare others.
    return not text.isprintable() and _CONTROL.search(text) is not None


def _no_control_chars(value: str) -> str:
    if has_control_chars(value):
        raise ValueError(CONTROL_MESSAGE)
    return value


def _iso_string(value: Any) -> Any:
    # pydantic would take a number, even in a string, as a Unix time; the contract says
    # ISO-8601, and a guessed seconds-or-milliseconds value would corrupt the data.
    if not isinstance(value, (str, dt.datetime)) or (
        isinstance(value, str) and _NUMBER.fullmatch(value)
    ):
        raise ValueError("must be an ISO-8601 date-time string")
    return value


_NUMBER = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")


def _as_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise ValueError("is out of range once converted to UTC") from None


VisitorId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=6, max_length=64)
]
EventName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(_no_control_chars),
]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Timestamp = Annotated[
    dt.datetime, BeforeValidator(_iso_string), AfterValidator(_as_utc)
]


class BehaviorEvent(BaseModel):
    """One event as a client sends it."""

    model_config = ConfigDict(extra="forbid")

    visitor_id: VisitorId
    event: EventName
    timestamp: Timestamp | None = Field(
        default=None, description="Defaults to the receive time; naive means UTC."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    user_agent: str | None = Field(
        default=None, description="Taken from the User-Agent header when absent."
    )
    event_id: EventId | None = Field(
        default=None, description="Client id; a repeat within the window is ignored."
    )
    sent_at: Timestamp | None = Field(
        default=None,
        description="The client's clock at send time; corrects `timestamp` for skew.",
    )


def _bounds(declared: Any) -> Meta:
    """The length bounds of one of the Annotated types BehaviorEvent declares."""
    (rule,) = [
        item for item in declared.__metadata__ if isinstance(item, StringConstraints)
    ]
    return Meta(min_length=rule.min_length, max_length=rule.max_length)


# The fields whose whitespace pydantic strips: the fast path takes only values with
# none to strip, so both paths store the same text.
STRIPPED = tuple(
    name
    for name, info in BehaviorEvent.model_fields.items()
    if any(getattr(item, "strip_whitespace", False) for item in info.metadata)
)


NOTHING = "(?!)"  # a pattern no string matches


class PlainEvent(
    msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False
):
    """A BehaviorEvent as msgspec decodes and encodes it.

    Its fields up to user_agent are in the stored line's order (store/line.py KEYS);
    an absent metadata or user_agent stays UNSET until the decoder fills it in.
    timestamp and sent_at are kept as sent, for the fast path to read those in the
    common form (ingest/fast.py), and are UNSET again before encoding: they go into
    the line's head. test_id is the collector's (ingest/test_tag.py): set before
    encoding, never taken from a body, where no value matches its pattern, so such a
    body goes the full way and gets its 422 there. tests/test_decode.py checks it
    against BehaviorEvent on generated and edge inputs.
    """

    event: Annotated[str, _bounds(EventName)]
    visitor_id: Annotated[str, _bounds(VisitorId)]
    event_id: Annotated[str, _bounds(EventId)] | None = None
    test_id: Annotated[str, Meta(pattern=NOTHING)] | UnsetType = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    user_agent: str | UnsetType | None = UNSET
    timestamp: str | UnsetType | None = UNSET
    sent_at: str | UnsetType | None = UNSET


class Envelope(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """`{"events": [...]}`, a batch's other shape."""

    events: list[PlainEvent]
