"""Google Analytics 4 under /ga4: the Measurement Protocol (and its validation
server, ga4_debug.py) and gtag's own `/g/collect` hits."""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl

from metrics_service.http.errors import ApiError
from metrics_service.http.openapi import BODY_ERRORS, Doc, Endpoint, query
from metrics_service.ingest.clock import EPOCH, iso
from metrics_service.ingest.decode import parse_json, type_name
from metrics_service.ingest.formats import ga4_debug
from metrics_service.ingest.formats.lane import (
    SDK_KEY,
    Foreign,
    Loc,
    Mapped,
    Payload,
    SdkLane,
    compact,
    not_a_list,
)
from metrics_service.store.writer import Outcome

PREFIX = "/ga4"
# Past year 9999 a datetime cannot hold it.
MAX_MICROS = 253_402_300_799_999_999


def micros_to_iso(value: object) -> str | None:
    """timestamp_micros as our ISO timestamp, or None when it is not one."""
    if type(value) is not int or not 0 <= value <= MAX_MICROS:
        return None
    return iso(EPOCH + dt.timedelta(microseconds=value))


@functools.lru_cache(maxsize=4096)
def _where_mp(visitor_field: str, index: int, own_time: bool) -> dict[str, Loc]:
    """Where an event's fields came from; shared by every request (never changed)."""
    at: Loc = ["events", index]
    return {
        "visitor_id": [visitor_field],
        "event": [*at, "name"],
        "metadata": [*at, "params"],
        "timestamp": [*at, "timestamp_micros"] if own_time else ["timestamp_micros"],
    }


def _map_mp(body: dict[str, Any], index: int, item: Any, ids: dict[str, Any]) -> Mapped:
    """One Measurement Protocol event as our event."""
    if not isinstance(item, dict):
        return Mapped(item, {})
    visitor_field = "client_id"
    if "client_id" not in body and "app_instance_id" in body:
        visitor_field = "app_instance_id"
    micros = item.get("timestamp_micros")
    where = _where_mp(visitor_field, index, micros is not None)
    problems: Sequence[dict[str, Any]] = ()
    params = item.get("params")
    if params is None:
        params = {}
    if isinstance(params, dict):
        params = {**params, SDK_KEY: ids}
    event: dict[str, Any] = {"metadata": params}
    if item.get("name") is not None:
        event["event"] = item["name"]
    if body.get(visitor_field) is not None:
        event["visitor_id"] = body[visitor_field]
    if micros is None:
        micros = body.get("timestamp_micros")
    if micros is not None:
        timestamp = micros_to_iso(micros)
        if timestamp is None:
            problems = [
                {
                    "loc": where["timestamp"],
                    "msg": "expected an integer: microseconds since the Unix epoch",
                    "type": "timestamp_micros",
                }
            ]
        else:
            event["timestamp"] = timestamp
    return Mapped(event, where, problems)


class MeasurementProtocolLane(SdkLane):
    key_hint = "the api_secret query parameter"
    missing = {
        "visitor_id": "no client_id or app_instance_id: it is the visitor id",
        "event": "an event needs its name",
    }

    def payload(self, request: Foreign) -> Payload:
        body = parse_json(request.body)
        if not isinstance(body, dict):
            raise ApiError(422, f"expected a JSON object, got {type_name(body)}")
        events = body.get("events")
        if not isinstance(events, list):
            raise not_a_list("events", "an array of events, each {name, params}")
        query = request.query
        ids = compact(
            {
                "format": "ga4",
                "type": "mp",
                "user_id": body.get("user_id"),
                "measurement_id": query.get("measurement_id"),
                "firebase_app_id": query.get("firebase_app_id"),
                "user_properties": body.get("user_properties"),
            }
        )
        items = [_map_mp(body, i, item, ids) for i, item in enumerate(events)]
        keys: list[tuple[str, object]] = []
        if "api_secret" in query:
            keys.append(("api_secret", query["api_secret"]))
        return Payload(items, True, keys)

    def answer(self, outcome: Outcome, sampled_out: int) -> tuple[int, bytes]:
        # 204 as Google answers. Google never refuses; a refusal here is a 4xx,
        # which gtag and the Measurement Protocol clients do not retry.
        return 204, b""


_GTAG_WHERE: dict[str, Loc] = {
    "visitor_id": ["cid"],
    "event": ["en"],
    "metadata": ["ep"],
}


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _map_hit(hit: dict[str, str]) -> Mapped:
    """One gtag hit (its query parameters) as our event."""
    params: dict[str, Any] = {}
    user_properties: dict[str, Any] = {}
    problems: list[dict[str, Any]] = []
    for name, value in hit.items():
        if name.startswith(("ep.", "up.")):
            (params if name[0] == "e" else user_properties)[name[3:]] = value
        elif name.startswith(("epn.", "upn.")):
            number = _number(value)
            if number is None:
                problems.append(
                    {
                        "loc": [name],
                        "msg": f"expected a number, got {value[:40]!r}",
                        "type": "float_parsing",
                    }
                )
            (params if name[0] == "e" else user_properties)[name[4:]] = number
    params[SDK_KEY] = compact(
        {
            "format": "ga4",
            "type": "gtag",
            "user_id": hit.get("uid"),
            "measurement_id": hit.get("tid"),
            "url": hit.get("dl"),
            "title": hit.get("dt"),
            "referrer": hit.get("dr"),
            "session_id": hit.get("sid"),
            "user_properties": user_properties or None,
        }
    )
    event: dict[str, Any] = {"metadata": params}
    if "en" in hit:
        event["event"] = hit["en"]
    if "cid" in hit:
        event["visitor_id"] = hit["cid"]
    return Mapped(event, _GTAG_WHERE, problems)


class GtagLane(SdkLane):
    """POST (and GET) /g/collect: each line of a POST body is a further query
    string over the URL's parameters, one hit each; no body, the URL is the hit."""

    key_hint = "?token= or an Authorization: Bearer header (gtag sends no key)"
    missing = {
        "visitor_id": "no cid (the client id): it is the visitor id",
        "event": "no en (the event name)",
    }

    def payload(self, request: Foreign) -> Payload:
        base = request.query
        lines = [line for line in request.body.split(b"\n") if line.strip()]
        if not lines:
            return Payload([_map_hit(base)], False, [])
        hits = []
        for line in lines:
            own = parse_qsl(
                line.strip().decode("utf-8", "replace"), keep_blank_values=True
            )
            hits.append(_map_hit({**base, **dict(own)}))
        return Payload(hits, len(hits) > 1, [])

    def answer(self, outcome: Outcome, sampled_out: int) -> tuple[int, bytes]:
        return 204, b""


_MP_DOC = Doc(
    "GA4 Measurement Protocol: `{client_id, events: [{name, params}]}`",
    {204: ("Stored (or duplicates ignored)", None), **BODY_ERRORS},
    body={"type": "object"},
    params=(
        query("measurement_id", {"type": "string"}, "The web stream's id."),
        query("firebase_app_id", {"type": "string"}, "The app stream's id."),
        query(
            "api_secret",
            {"type": "string"},
            "Checked against METRICS_INGEST_TOKEN when that is set.",
        ),
    ),
    description="All or nothing, unlike Google: an invalid event is refused with 422.",
)
_GTAG_DOC = Doc(
    "GA4 gtag hits: `v=2&tid=&cid=&en=&ep.<name>=&epn.<name>=...`",
    {204: ("Stored", None), **BODY_ERRORS},
    params=(
        query("en", {"type": "string"}, "Event name."),
        query("cid", {"type": "string"}, "Client id: the visitor id."),
    ),
    description="POST: each body line is a further query string over the URL's, "
    "one hit each.",
)


def _endpoints() -> tuple[Endpoint, ...]:
    gtag = GtagLane()
    return (
        Endpoint(
            "POST", f"{PREFIX}/mp/collect", MeasurementProtocolLane(), "ingest", _MP_DOC
        ),
        Endpoint(
            "POST",
            f"{PREFIX}/debug/mp/collect",
            ga4_debug.debug,
            "open",
            ga4_debug.DOC,
        ),
        Endpoint("GET", f"{PREFIX}/g/collect", gtag, "ingest", _GTAG_DOC),
        Endpoint("POST", f"{PREFIX}/g/collect", gtag, "ingest", _GTAG_DOC),
    )


ENDPOINTS = _endpoints()
