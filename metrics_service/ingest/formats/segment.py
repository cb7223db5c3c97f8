"""Segment's wire format under /segment: analytics.js (analytics-next), the HTTP
Tracking API and its server libraries, and RudderStack, which speaks it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import orjson
from msgspec import UNSET
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from metrics_service import _native
from metrics_service.http.auth import basic_user
from metrics_service.http.errors import ApiError
from metrics_service.http.openapi import BODY_ERRORS, Doc, Endpoint
from metrics_service.ingest.decode import check_integers, parse_json, type_name
from metrics_service.ingest.fast import UNDECODABLE
from metrics_service.ingest.formats.lane import (
    PLAIN_TARGET,
    SDK_KEY,
    Foreign,
    Loc,
    Mapped,
    Payload,
    Premapped,
    SdkLane,
    not_a_list,
    pick,
    user_agent,
)
from metrics_service.ingest.formats.segment_settings import (
    SegmentSettings,
    settings_document,
)
from metrics_service.store.writer import Outcome

PREFIX = "/segment/v1"
# The browser SDK's short paths and the HTTP API's, by the call they carry.
CALLS = {
    "t": "track",
    "p": "page",
    "i": "identify",
    "g": "group",
    "a": "alias",
    "s": "screen",
    **{
        name: name for name in ("track", "page", "identify", "group", "alias", "screen")
    },
}
KINDS = frozenset(CALLS.values())
TRAITS_CALLS = ("identify", "group")
# $sdk's keys from context.page and from context.library.
_FROM_PAGE = (
    ("url", "url"),
    ("path", "path"),
    ("title", "title"),
    ("referrer", "referrer"),
)
_FROM_LIBRARY = (("library", "name"), ("library_version", "version"))

_BY_ANONYMOUS: dict[str, Loc] = {
    "visitor_id": ["anonymousId"],
    "event": ["event"],
    "event_id": ["messageId"],
    "timestamp": ["timestamp"],
    "sent_at": ["sentAt"],
    "user_agent": ["context", "userAgent"],
}
_BY_USER: dict[str, Loc] = {**_BY_ANONYMOUS, "visitor_id": ["userId"]}


def _where(properties: str, by_user: bool) -> dict[str, Loc]:
    where = _BY_USER if by_user else _BY_ANONYMOUS
    return {**where, "metadata": [properties]}


_WHERE = {
    (properties, by_user): _where(properties, by_user)
    for properties in ("properties", "traits")
    for by_user in (False, True)
}
_WHERE[("context.traits", False)] = {
    **_BY_ANONYMOUS,
    "metadata": ["context", "traits"],
}
_WHERE[("context.traits", True)] = {**_BY_USER, "metadata": ["context", "traits"]}


class Message(msgspec.Struct, gc=False):
    """A Segment call: the fields the mapping reads, of any type (the event contract
    words what is wrong); the others are skipped. UNSET: the call has no such key."""

    type: Any = None
    event: Any = None
    anonymousId: Any = None
    userId: Any = None
    messageId: Any = UNSET
    timestamp: Any = UNSET
    originalTimestamp: Any = None
    sentAt: Any = UNSET
    properties: Any = None
    traits: Any = None
    context: Any = None
    name: Any = None
    groupId: Any = None
    previousId: Any = None
    writeKey: Any = UNSET


class Batch(msgspec.Struct, gc=False):
    batch: list[Message]
    sentAt: Any = None
    writeKey: Any = UNSET


_read_call = msgspec.json.Decoder(Message).decode
_read_batch = msgspec.json.Decoder(Batch).decode


def read_call(body: bytes) -> Message:
    """One call. msgspec reads the common body; any other is read by parse_json, so
    a malformed one is worded as our own endpoints word it."""
    try:
        message = _read_call(body)
    except UNDECODABLE:
        return read_call_loosely(body)
    check_integers(body)
    return message


def _parsed_object(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ApiError(
            422, f"expected a JSON object (a Segment call), got {type_name(data)}"
        )
    return data


def read_call_loosely(body: bytes) -> Message:
    return msgspec.convert(_parsed_object(body), Message)


Calls = tuple[list[Message | Any], Any, Any]


def read_batch(body: bytes) -> Calls:
    """A batch's calls (a value that is not an object stays as sent, to be refused),
    its sentAt and its writeKey, read as read_call() reads one call."""
    try:
        batch = _read_batch(body)
    except UNDECODABLE:
        return read_batch_loosely(body)
    check_integers(body)
    return list(batch.batch), batch.sentAt, batch.writeKey


def read_batch_loosely(body: bytes) -> Calls:
    data = _parsed_object(body)
    calls = data.get("batch")
    if not isinstance(calls, list):
        raise not_a_list("batch", "an array of calls")
    messages = [
        msgspec.convert(call, Message) if isinstance(call, dict) else call
        for call in calls
    ]
    return messages, data.get("sentAt"), data.get("writeKey", UNSET)


_NO_CONTEXT: dict[str, Any] = {}  # read, never written


def _map(message: Message | Any, call: str | None, sent_at: Any) -> Mapped:
    """One Segment call as our event (see README, Use the SDK you already have)."""
    if type(message) is not Message:
        return Mapped(message, {})
    kind = message.type if call is None else call
    problems: Sequence[dict[str, Any]] = ()
    if type(kind) is not str or kind not in KINDS:  # an array or object: unhashable
        problems = [
            {
                "loc": ["type"],
                "msg": "expected one of track, page, screen, identify, group or "
                f"alias, got {kind!r}"
                if isinstance(kind, str)
                else f"expected the call's type as a string, got {type_name(kind)}",
                "type": "segment_type",
            }
        ]
        kind = "track"
    context = message.context
    if type(context) is not dict:
        context = _NO_CONTEXT
    # analytics-next sends userId null and RudderStack "" before identify: absent.
    anonymous_id = message.anonymousId or None
    user_id = message.userId or None
    by_user = anonymous_id is None and user_id is not None
    field = "properties"
    metadata: Any = message.properties
    if kind in TRAITS_CALLS:
        field = "traits"
        metadata = message.traits
        if metadata is None and "traits" in context:
            # RudderStack sends an identify's traits only in context.traits.
            field, metadata = "context.traits", context["traits"]
    elif kind == "alias":
        metadata = None
    if metadata is None:
        metadata = {}
    if type(metadata) is dict:
        # Written out rather than looped: this runs for every event of a batch.
        sdk: dict[str, Any] = {"format": "segment", "type": kind}
        if user_id is not None:
            sdk["user_id"] = user_id
        if message.name is not None:
            sdk["name"] = message.name
        if message.groupId is not None:
            sdk["group_id"] = message.groupId
        if message.previousId is not None:
            sdk["previous_id"] = message.previousId
        page = context.get("page")
        if type(page) is dict:
            pick(sdk, page, _FROM_PAGE)
        library = context.get("library")
        if type(library) is dict:
            pick(sdk, library, _FROM_LIBRARY)
        metadata = {**metadata, SDK_KEY: sdk}
    event: dict[str, Any] = {"metadata": metadata}
    name = message.event if kind == "track" else kind
    if name is not None:
        event["event"] = name
    visitor = user_id if by_user else anonymous_id
    if visitor is not None:
        event["visitor_id"] = visitor
    if message.messageId is not UNSET:
        event["event_id"] = message.messageId
    timestamp = message.timestamp
    where = _WHERE[field, by_user]
    if timestamp is UNSET or timestamp is None:
        timestamp = message.originalTimestamp  # RudderStack's
        if timestamp is not None and message.timestamp is UNSET:
            where = {**where, "timestamp": ["originalTimestamp"]}
    if timestamp is not None:
        event["timestamp"] = timestamp
    sent = sent_at if message.sentAt is UNSET else message.sentAt
    if sent is not None:
        event["sent_at"] = sent
    agent = context.get("userAgent")
    if agent is not None:
        event["user_agent"] = user_agent(agent)
    return Mapped(event, where, problems)


_FAST_SPEC = (Message, _FROM_PAGE, _FROM_LIBRARY, PLAIN_TARGET)


def mapped(
    messages: list[Message | Any],
    call: str | None,
    sent_at: Any,
    keys: list[tuple[str, object]],
) -> Payload:
    """The calls as our events: premapped by C when every one is of the common
    shape (the same mapping as _map), else each by _map."""

    def items() -> list[Mapped]:
        return [_map(message, call, sent_at) for message in messages]

    fast = _native.segment_events
    events = None if fast is None else fast(messages, call, sent_at, _FAST_SPEC)
    if events is None:
        return Payload(items(), call is None, keys)
    return Payload([], call is None, keys, Premapped(events, items))


class SegmentLane(SdkLane):
    """`call`: the one call a path carries, or None for a batch path."""

    key_hint = "the writeKey (in the body, or as the Basic auth user)"
    missing = {
        "visitor_id": "no anonymousId or userId: one of them is the visitor id",
        "event": "a track call needs its event name",
    }

    def __init__(self, call: str | None) -> None:
        self.call = call

    def payload(self, request: Foreign) -> Payload:
        keys: list[tuple[str, object]] = []
        user = basic_user(request.scope["headers"])
        if user is not None:
            keys.append(("writeKey (Basic auth user)", user))
        if self.call is not None:
            message = read_call(request.body)
            if message.writeKey is not UNSET:
                keys.append(("writeKey", message.writeKey))
            return mapped([message], self.call, None, keys)
        messages, sent_at, write_key = read_batch(request.body)
        if write_key is not UNSET:
            keys.append(("writeKey", write_key))
        for message in messages:
            if type(message) is Message and message.writeKey is not UNSET:
                keys.append(("writeKey", message.writeKey))
        return mapped(messages, None, sent_at, keys)

    def answer(self, outcome: Outcome, sampled_out: int) -> tuple[int, bytes]:
        # Segment's own answer, 200 {"success": true}; its libraries retry 5xx, 408 and
        # 429 only, so a 4xx refusal (422) is dropped rather than retried forever.
        return 200, orjson.dumps(
            {
                "success": True,
                "stored": outcome.stored,
                "duplicates": outcome.duplicates,
                "sampled_out": sampled_out,
            }
        )


async def settings(request: Request) -> Response:
    return Response(
        orjson.dumps(settings_document(request, PREFIX)), media_type="application/json"
    )


class SegmentAnswer(BaseModel):
    success: bool
    stored: int
    duplicates: int
    sampled_out: int


_CALL_DOC = Doc(
    "Segment: one call (analytics.js, the HTTP Tracking API, RudderStack)",
    {200: ("Stored (or a duplicate ignored)", SegmentAnswer), **BODY_ERRORS},
    body={"type": "object"},
    description="The writeKey in the body or as the Basic auth user is checked "
    "against METRICS_INGEST_TOKEN when that is set. Mapped as README's "
    '"Use the SDK you already have" says.',
)
_BATCH_DOC = _CALL_DOC._replace(
    summary='Segment: a batch, `{"batch": [...], "sentAt", "writeKey"}`, all or nothing'
)


def _endpoints() -> tuple[Endpoint, ...]:
    lanes: dict[str, SegmentLane] = {}
    rows = [
        Endpoint(
            "GET",
            f"{PREFIX}/projects/{{writeKey}}/settings",
            settings,
            "open",
            Doc(
                "Segment: the settings analytics.js loads from its cdnURL",
                {200: ("Segment.io pointing back at this service", SegmentSettings)},
                params=(
                    {
                        "name": "writeKey",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ),
            ),
        )
    ]
    for path, call in CALLS.items():
        lane = lanes.setdefault(call, SegmentLane(call))
        rows.append(Endpoint("POST", f"{PREFIX}/{path}", lane, "ingest", _CALL_DOC))
    batch = SegmentLane(None)
    for path in ("b", "batch"):
        rows.append(Endpoint("POST", f"{PREFIX}/{path}", batch, "ingest", _BATCH_DOC))
    return tuple(rows)


ENDPOINTS = _endpoints()
