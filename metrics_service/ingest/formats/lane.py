"""The SDK formats' lane: a foreign body in, mapped to our events, stored through the
one decoder (ingest/decode.py check_events and to_group), the SDK's own answer out.

Each format (segment.py, posthog.py, ga4.py) says how its payload maps to our event
fields and where each came from, so a refusal names the foreign field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple
from urllib.parse import parse_qsl

import msgspec
import msgspec.inspect
from msgspec import UNSET
from starlette.types import Receive, Scope, Send

from metrics_service.http.auth import check_sdk_key
from metrics_service.http.body import (
    ACCEPTED_TYPES,
    MAX_USER_AGENT,
    Gunzip,
    Head,
    media_type,
    read_body,
    read_head,
)
from metrics_service.http.errors import ApiError
from metrics_service.ingest import fast
from metrics_service.ingest.clock import Received, received_now
from metrics_service.ingest.contract import PlainEvent
from metrics_service.ingest.decode import check_count, check_events, to_group
from metrics_service.ingest.endpoint import BODY_KEY, NOTHING
from metrics_service.ingest.schema import json_path
from metrics_service.ingest.test_tag import test_id
from metrics_service.service import Service
from metrics_service.store.line import Group
from metrics_service.store.sink import SinkError
from metrics_service.store.writer import Outcome

GZIP_MAGIC = b"\x1f\x8b"
SDK_KEY = "$sdk"
Loc = list[str | int]


class Mapped(msgspec.Struct, gc=False):
    """One foreign event as our event's fields (or the foreign value itself when it
    is not an object, for check_events to refuse), with where each field came from."""

    event: Any
    where: dict[str, Loc]
    problems: Sequence[dict[str, Any]] = ()


class Premapped(NamedTuple):
    """A format's fast mapping (_native segment_events, posthog_events) of every
    event, and the declared mapping of them, for when the decoder declines these."""

    events: list[PlainEvent]
    items: Callable[[], list[Mapped]]


class Payload(NamedTuple):
    items: list[Mapped]  # empty when premapped
    batch: bool  # refusals carry each event's `index`
    keys: list[tuple[str, object]]  # (foreign field, value): the SDK's own keys
    premapped: Premapped | None = None


def _length_bounds(field: str) -> tuple[int, int]:
    """The length bounds msgspec checks of one of PlainEvent's text fields."""
    struct = msgspec.inspect.type_info(PlainEvent)
    assert isinstance(struct, msgspec.inspect.StructType)
    (info,) = [f for f in struct.fields if f.name == field]
    kind = info.type
    if isinstance(kind, msgspec.inspect.UnionType):
        (kind,) = [t for t in kind.types if isinstance(t, msgspec.inspect.StrType)]
    assert isinstance(kind, msgspec.inspect.StrType)
    return kind.min_length or 0, kind.max_length or 2**62


# What the fast mappings in C make of an event: PlainEvent, as msgspec.convert()
# checks it (fast.convert), with the SDK's user agent cut as user_agent() cuts it.
PLAIN_TARGET = (
    PlainEvent,
    UNSET,
    SDK_KEY,
    MAX_USER_AGENT,
    (
        *_length_bounds("event"),
        *_length_bounds("visitor_id"),
        *_length_bounds("event_id"),
    ),
)


class Foreign(NamedTuple):
    """A request as the formats read it."""

    scope: Scope
    head: Head
    body: bytes
    query: dict[str, str]
    received: Received


def query_of(scope: Scope) -> dict[str, str]:
    """The query parameters (the first of each name), as text."""
    raw: bytes = scope.get("query_string", b"")
    if not raw:
        return {}
    params: dict[str, str] = {}
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        params.setdefault(name, value)
    return params


def inflate(body: bytes, limit: int) -> bytes:
    """A gzip body recognised by its magic bytes (posthog-js sends no
    Content-Encoding), inflated with the same bound as http/body.py."""
    if body[:2] != GZIP_MAGIC:
        return body
    gunzip = Gunzip(limit)
    out = gunzip.feed(body)
    gunzip.finish()
    return out


async def read_foreign(
    scope: Scope, receive: Receive, limit: int
) -> tuple[Head, bytes]:
    """The request's headers and body (gzip inflated, by header or magic bytes)."""
    head = read_head(scope["headers"])
    kind = media_type(head)
    if kind not in ACCEPTED_TYPES:
        names = ", ".join(t for t in ACCEPTED_TYPES if t) + " or none"
        raise ApiError(415, f"unsupported Content-Type {kind!r}; send {names}")
    if scope["method"] != "POST":
        return head, b""
    body = await read_body(head, receive, limit)
    return head, inflate(body, limit)


def not_a_list(field: str, expected: str) -> ApiError:
    """The 422 for a payload whose `field` is not the array of events it must be."""
    return ApiError(
        422, [{"loc": [field], "msg": f"expected {expected}", "type": "list_type"}]
    )


def user_agent(value: object) -> object:
    """An SDK-reported user agent, cut as the header's is (http/body.py)."""
    if isinstance(value, str) and len(value) > MAX_USER_AGENT:
        return value[:MAX_USER_AGENT]
    return value


def compact(values: dict[str, Any]) -> dict[str, Any]:
    """`$sdk` without the keys the SDK did not send."""
    return {k: v for k, v in values.items() if v is not None}


def pick(
    sdk: dict[str, Any], source: dict[str, Any], keys: tuple[tuple[str, str], ...]
) -> None:
    """Copy into `sdk` the keys `source` has (not null), under their $sdk names."""
    for name, key in keys:
        value = source.get(key)
        if value is not None:
            sdk[name] = value


class SdkLane:
    """An SDK's ingest endpoint, served from the front door for POST (FrontDoor.lanes)
    and as a plain ASGI app through the router (gtag's GET hits)."""

    # http/auth.py Guards: the SDK cannot send a bearer token; payload() returns its
    # key and this lane checks it against METRICS_INGEST_TOKEN.
    own_key: ClassVar[bool] = True
    # What a request without a usable key is told to send.
    key_hint: ClassVar[str] = "the SDK's key"
    # Messages for our required fields when the foreign ones are missing.
    missing: ClassVar[dict[str, str]] = {}

    def payload(self, request: Foreign) -> Payload:
        raise NotImplementedError

    def answer(self, outcome: Outcome, sampled_out: int) -> tuple[int, bytes]:
        """Status and JSON body (b"" for none) of a stored request."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.serve(scope, receive, send, False)

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, vary: bool
    ) -> None:
        service: Service = scope["app"].service
        head, body = await read_foreign(scope, receive, service.config.max_body_bytes)
        group, sampled_out = self.group(scope, head, body, service)
        service.sampled_out += sampled_out
        outcome = NOTHING
        if group.bodies:
            try:
                outcome = await service.writer.enqueue(group)
            except SinkError as exc:
                # 503: every SDK here retries a 5xx, and nothing was stored.
                raise ApiError(503, str(exc)) from None
        status, answer = self.answer(outcome, sampled_out)
        headers = [(b"content-length", b"%d" % len(answer))]
        if answer:
            headers.append((b"content-type", b"application/json"))
        if vary:
            headers.append((b"vary", b"Origin"))
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": answer})

    def group(
        self, scope: Scope, head: Head, body: bytes, service: Service
    ) -> tuple[Group, int]:
        """The request's group and how many sampling dropped. Its own call so that the
        decoded payload is freed before the request waits for the writer: then its
        objects are freed while still in the cache, and no collection walks them."""
        token = service.config.ingest_token
        # For the quarantine, should the front door refuse it; with a token, only
        # once the SDK's key (which may be in the body) is known good.
        if token is None:
            scope[BODY_KEY] = body
        request = Foreign(scope, head, body, query_of(scope), received_now())
        payload = self.payload(request)
        check_sdk_key(scope, token, payload.keys, self.key_hint)
        if token is not None:
            scope[BODY_KEY] = body
        return self.decode(payload, service, request, test_id(scope))

    def decode(
        self, payload: Payload, service: Service, request: Foreign, tag: str | None
    ) -> tuple[Group, int]:
        """The group of stored events and how many sampling dropped, as for our own
        events; a 422 names the foreign fields."""
        config = service.config
        finish = functools.partial(
            fast.finish,
            max_event_bytes=config.max_event_bytes,
            received=request.received,
            header_user_agent=request.head.user_agent,
            test_id=tag,
        )
        if payload.premapped is not None:
            premapped, late = payload.premapped
            check_count(len(premapped), config.max_batch)
            if service.policy.plain:
                group = finish(premapped)
                if group is not None:
                    return group, 0
            payload = payload._replace(items=late(), premapped=None)
        items, batch = payload.items, payload.batch
        check_count(len(items), config.max_batch)
        problems = [
            {"index": i, **problem} if batch else problem
            for i, item in enumerate(items)
            for problem in item.problems
        ]
        objs = [item.event for item in items]
        if not problems and service.policy.plain:
            # The one decoder's fast path, on events already decoded.
            plain = fast.convert(objs)
            if plain is not None:
                group = finish(plain)
                if group is not None:
                    return group, 0
        try:
            events = check_events(
                objs, service.policy, config.max_event_bytes, batch=batch
            )
        except ApiError as exc:
            if exc.status_code != 422 or not isinstance(exc.detail, list):
                raise
            raise ApiError(422, problems + self.foreign(exc.detail, items)) from None
        if problems:
            raise ApiError(422, problems)
        try:
            return to_group(
                events,
                service.policy,
                received=request.received,
                header_user_agent=request.head.user_agent,
                batch=batch,
                test_id=tag,
            )
        except ApiError as exc:
            if exc.status_code != 422 or not isinstance(exc.detail, list):
                raise
            raise ApiError(422, self.foreign(exc.detail, items)) from None

    def foreign(
        self, detail: list[dict[str, Any]], items: list[Mapped]
    ) -> list[dict[str, Any]]:
        """The decoder's problems with our field names replaced by the foreign ones."""
        out = []
        for problem in detail:
            loc = problem.get("loc") or []
            index = problem.get("index", 0)
            if loc and isinstance(loc[0], str) and 0 <= index < len(items):
                where = items[index].where.get(loc[0])
                if where is not None:
                    problem = {**problem, "loc": [*where, *loc[1:]]}
                    if problem.get("type") == "missing" and loc[0] in self.missing:
                        problem["msg"] = self.missing[loc[0]]
                    elif problem.get("type") == "schema":
                        # The tracking plan's JSON path, also at the start of msg.
                        path = json_path(problem["loc"])
                        msg = str(problem["msg"]).removeprefix(problem["path"])
                        problem["path"], problem["msg"] = path, path + msg
            out.append(problem)
        return out
