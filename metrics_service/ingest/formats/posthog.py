"""PostHog's wire format under /posthog: posthog-js (`api_host`) and the server
libraries, plus the start-up calls posthog-js makes before it sends events."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Any
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from metrics_service import _native
from metrics_service.http.errors import ApiError
from metrics_service.http.openapi import BODY_ERRORS, Doc, Endpoint
from metrics_service.ingest.clock import Received, iso
from metrics_service.ingest.decode import parse_json, type_name
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
from metrics_service.store.writer import Outcome

PREFIX = "/posthog"
CAPTURE_PATHS = ("/e/", "/i/v0/e/", "/batch/", "/capture/")
# The event types $sdk names: what the call was, as the SDKs' methods say it.
TYPES = {
    "$identify": "identify",
    "$set": "identify",
    "$create_alias": "alias",
    "$groupidentify": "group",
    "$pageview": "page",
    "$pageleave": "page",
    "$screen": "screen",
}
_OTHER_TYPE = "capture"
_WHERE_TOP: dict[str, Loc] = {
    "visitor_id": ["distinct_id"],
    "event": ["event"],
    "event_id": ["uuid"],
    "timestamp": ["timestamp"],
    "sent_at": ["sent_at"],
    "metadata": ["properties"],
    "user_agent": ["properties", "$raw_user_agent"],
}
_WHERE_IN_PROPERTIES: dict[str, Loc] = {
    **_WHERE_TOP,
    "visitor_id": ["properties", "distinct_id"],
}


# $sdk's keys from the event's properties.
_FROM_PROPERTIES = (
    ("url", "$current_url"),
    ("path", "$pathname"),
    ("title", "title"),
    ("referrer", "$referrer"),
    ("library", "$lib"),
    ("library_version", "$lib_version"),
)


def _map(item: Any, sent_at: Any, now: dt.datetime) -> Mapped:
    """One PostHog event as our event (see README, Use the SDK you already have)."""
    if not isinstance(item, dict):
        return Mapped(item, {})
    properties = item.get("properties")
    if properties is None:
        properties = {}
    distinct_id = item.get("distinct_id")
    where = _WHERE_TOP
    metadata: Any = properties
    agent = None
    if isinstance(properties, dict):
        if distinct_id is None and "distinct_id" in properties:
            distinct_id = properties["distinct_id"]
            where = _WHERE_IN_PROPERTIES
        agent = properties.get("$raw_user_agent")
        # The token may be METRICS_INGEST_TOKEN itself: it is never stored.
        metadata = dict(properties)
        metadata.pop("token", None)
        for key in ("$set", "$set_once"):
            if key in item and key not in metadata:
                metadata[key] = item[key]
        name = item.get("event")
        sdk: dict[str, Any] = {"format": "posthog"}
        if isinstance(name, str):
            sdk["type"] = TYPES.get(name, _OTHER_TYPE)
        pick(sdk, properties, _FROM_PROPERTIES)
        metadata[SDK_KEY] = sdk
    event: dict[str, Any] = {"metadata": metadata}
    if item.get("event") is not None:
        event["event"] = item["event"]
    if distinct_id is not None:
        # posthog-js and the libraries allow numbers; the stored id is text.
        event["visitor_id"] = (
            str(distinct_id) if type(distinct_id) is int else distinct_id
        )
    if item.get("uuid") is not None:
        event["event_id"] = item["uuid"]
    timestamp = item.get("timestamp")
    offset = item.get("offset")
    if timestamp is None and type(offset) is int and 0 <= offset < 10**12:
        # Older posthog-js: how many milliseconds ago the event happened.
        timestamp = iso(now - dt.timedelta(milliseconds=offset))
        where = {**where, "timestamp": ["offset"]}
    if timestamp is not None:
        event["timestamp"] = timestamp
    sent = item.get("sent_at", sent_at)
    if sent is not None:
        event["sent_at"] = sent
    if agent is not None:
        event["user_agent"] = user_agent(agent)
    return Mapped(event, where)


_FAST_SPEC = (TYPES, _OTHER_TYPE, _FROM_PROPERTIES, PLAIN_TARGET)


def mapped(
    items: list[Any],
    sent_at: Any,
    received: Received,
    batch: bool,
    keys: list[tuple[str, object]],
) -> Payload:
    """The events as ours, and their SDK keys added to `keys`: premapped by C when
    every one is of the common shape (the same mapping as _map), else each by _map."""

    def each() -> list[Mapped]:
        now = received.moment
        return [_map(item, sent_at, now) for item in items]

    fast = _native.posthog_events
    premapped = None if fast is None else fast(items, sent_at, _FAST_SPEC)
    if premapped is not None:
        events, found = premapped
        keys += found
        return Payload([], batch, keys, Premapped(events, each))
    for item in items:
        if isinstance(item, dict):
            _keys(item, keys)
            properties = item.get("properties")
            if isinstance(properties, dict) and "token" in properties:
                keys.append(("properties.token", properties["token"]))
    return Payload(each(), batch, keys)


def _keys(value: dict[str, Any], keys: list[tuple[str, object]]) -> None:
    for field in ("api_key", "token"):
        if field in value:
            keys.append((field, value[field]))


def decoded_body(request: Foreign) -> bytes:
    """The JSON text inside a PostHog body: plain, `data=<base64>` (form) or base64
    with ?compression=base64 (gzip was already inflated by its magic bytes)."""
    body = request.body
    compression = request.query.get("compression", "")
    if compression not in ("", "gzip", "gzip-js", "base64"):
        raise ApiError(
            415,
            f"unsupported compression {compression[:40]!r}; send gzip-js, base64 or "
            "none",
        )
    if body.startswith(b"data="):
        form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        body = form.get("data", "").encode("latin-1")
        if not body.lstrip().startswith((b"{", b"[")):
            compression = "base64"
    if compression == "base64":
        try:
            body = base64.b64decode(body, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"body is not valid base64: {exc}") from None
    return body


class PostHogLane(SdkLane):
    key_hint = "the project token (api_key, token or properties.token)"
    missing = {
        "visitor_id": "no distinct_id (top level or in properties): it is the "
        "visitor id",
        "event": "no event name",
    }

    def payload(self, request: Foreign) -> Payload:
        data = parse_json(decoded_body(request))
        keys: list[tuple[str, object]] = []
        sent_at = None
        batch = True
        if isinstance(data, dict) and "batch" in data:
            _keys(data, keys)
            sent_at = data.get("sent_at")
            items = data["batch"]
            if not isinstance(items, list):
                raise not_a_list("batch", "an array of events")
        elif isinstance(data, dict):
            items, batch = [data], False
        elif isinstance(data, list):
            items = data
        else:
            raise ApiError(
                422,
                "expected an event, an array of events or "
                f'{{"api_key", "batch": [...]}}, got {type_name(data)}',
            )
        return mapped(items, sent_at, request.received, batch, keys)

    def answer(self, outcome: Outcome, sampled_out: int) -> tuple[int, bytes]:
        # PostHog's answer: the Python library wants exactly 200, posthog-js any 2xx.
        # Both retry 5xx (and 408/429), never another 4xx: a refusal (422) is dropped.
        return 200, orjson.dumps(
            {
                "status": 1,
                "stored": outcome.stored,
                "duplicates": outcome.duplicates,
                "sampled_out": sampled_out,
            }
        )


def remote_config(token: str) -> dict[str, Any]:
    """The project settings posthog-js asks for at start-up: nothing turned on, so
    it runs with its defaults and asks for nothing else."""
    return {
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": False,
        "captureDeadClicks": False,
        "capturePerformance": False,
        "autocapture_opt_out": False,
        "autocaptureExceptions": False,
        "elementsChainAsString": True,
        "sessionRecording": False,
        "heatmaps": False,
        "surveys": False,
        "defaultIdentifiedOnly": True,
        "siteApps": [],
    }


async def config_json(request: Request) -> Response:
    token = request.path_params["token"]
    return Response(orjson.dumps(remote_config(token)), media_type="application/json")


async def config_js(request: Request) -> Response:
    token = request.path_params["token"]
    key = orjson.dumps(token).decode()
    config = orjson.dumps(remote_config(token)).decode()
    script = (
        "(function() {\n"
        "  window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {};\n"
        f"  window._POSTHOG_REMOTE_CONFIG[{key}] = "
        f"{{config: {config}, siteApps: []}};\n"
        "})();\n"
    )
    return Response(script, media_type="text/javascript")


FLAGS_ANSWER = orjson.dumps(
    {
        "flags": {},
        "featureFlags": {},
        "featureFlagPayloads": {},
        "errorsWhileComputingFlags": False,
        "quotaLimited": [],
    }
)


async def flags(request: Request) -> Response:
    """No feature flags: the body (which flags the SDK asks about) needs no reading."""
    return Response(FLAGS_ANSWER, media_type="application/json")


class PostHogAnswer(BaseModel):
    status: int
    stored: int
    duplicates: int
    sampled_out: int


class PostHogConfig(BaseModel):
    token: str


class PostHogFlags(BaseModel):
    flags: dict[str, Any]
    featureFlags: dict[str, Any]


TOKEN_PARAM = {
    "name": "token",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
_CAPTURE_DOC = Doc(
    "PostHog: one event, an array, or a batch, all or nothing",
    {200: ("Stored (or duplicates ignored)", PostHogAnswer), **BODY_ERRORS},
    body={"oneOf": [{"type": "object"}, {"type": "array"}]},
    params=(
        {
            "name": "compression",
            "in": "query",
            "schema": {"type": "string", "enum": ["gzip-js", "gzip", "base64"]},
            "description": "gzip is also recognised without it, by its magic bytes.",
        },
    ),
    description="JSON, gzip or base64 (`data=` form field). The token (api_key, "
    "token or properties.token) is checked against METRICS_INGEST_TOKEN when that "
    'is set. Mapped as README\'s "Use the SDK you already have" says.',
)


def _endpoints() -> tuple[Endpoint, ...]:
    lane = PostHogLane()
    rows = [
        Endpoint("POST", f"{PREFIX}{path}", lane, "ingest", _CAPTURE_DOC)
        for path in CAPTURE_PATHS
    ]
    rows += [
        Endpoint(
            "GET",
            f"{PREFIX}/array/{{token}}/config.js",
            config_js,
            "open",
            Doc(
                "PostHog: the remote config posthog-js loads as a script",
                {200: ("JavaScript", "text/javascript")},
                params=(TOKEN_PARAM,),
            ),
        ),
        Endpoint(
            "GET",
            f"{PREFIX}/array/{{token}}/config",
            config_json,
            "open",
            Doc(
                "PostHog: the remote config as JSON",
                {200: ("Nothing turned on", PostHogConfig)},
                params=(TOKEN_PARAM,),
            ),
        ),
    ]
    rows += [
        Endpoint(
            "POST",
            f"{PREFIX}{path}",
            flags,
            "open",
            Doc("PostHog: feature flags (none)", {200: ("No flags", PostHogFlags)}),
        )
        for path in ("/flags/", "/decide/")
    ]
    return tuple(rows)


ENDPOINTS = _endpoints()
