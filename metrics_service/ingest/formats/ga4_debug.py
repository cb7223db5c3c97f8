"""POST /ga4/debug/mp/collect: the Measurement Protocol validation server. Stores
nothing; answers `{"validationMessages": [{fieldPath, description, validationCode}]}`
by Google's documented limits and reserved names."""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from metrics_service.http.errors import ApiError
from metrics_service.http.openapi import BODY_ERRORS, Doc
from metrics_service.ingest.decode import parse_json, type_name
from metrics_service.ingest.formats.lane import query_of, read_foreign

MAX_EVENTS = 25
MAX_PARAMS = 25
MAX_USER_PROPERTIES = 25
MAX_NAME = 40
MAX_USER_PROPERTY_NAME = 24
MAX_PARAM_VALUE = 100
MAX_USER_PROPERTY_VALUE = 36
MAX_ITEM_PARAMS = 10
MAX_USER_ID = 256
MAX_BODY_BYTES = 130_000
# Events may be backdated this far (72 hours), in microseconds.
MAX_AGE_MICROS = 72 * 3600 * 1_000_000
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_PREFIXES = ("google_", "ga_", "firebase_")
RESERVED_EVENTS = frozenset(
    [
        "ad_activeview",
        "ad_click",
        "ad_exposure",
        "ad_impression",
        "ad_query",
        "ad_reward",
        "adunit_exposure",
        "app_background",
        "app_clear_data",
        "app_exception",
        "app_remove",
        "app_store_refund",
        "app_store_subscription_cancel",
        "app_store_subscription_convert",
        "app_store_subscription_renew",
        "app_uninstall",
        "app_update",
        "app_upgrade",
        "dynamic_link_app_open",
        "dynamic_link_app_update",
        "dynamic_link_first_open",
        "error",
        "firebase_campaign",
        "firebase_in_app_message_action",
        "firebase_in_app_message_dismiss",
        "firebase_in_app_message_impression",
        "first_open",
        "first_visit",
        "in_app_purchase",
        "notification_dismiss",
        "notification_foreground",
        "notification_open",
        "notification_receive",
        "notification_send",
        "os_update",
        "screen_view",
        "session_start",
        "user_engagement",
    ]
)
RESERVED_PARAMS = frozenset({"firebase_conversion"})
RESERVED_USER_PROPERTIES = frozenset(
    {
        "first_open_time",
        "first_visit_time",
        "last_deep_link_referrer",
        "user_id",
        "first_open_after_install",
    }
)

Message = dict[str, str]


def message(path: str, description: str, code: str) -> Message:
    return {"fieldPath": path, "description": description, "validationCode": code}


def check_name(
    path: str, name: object, what: str, limit: int, reserved: frozenset[str]
) -> list[Message]:
    if not isinstance(name, str) or not name:
        return [message(path, f"{what} requires a non-empty name.", "VALUE_REQUIRED")]
    if len(name) > limit:
        return [
            message(
                path,
                f"{what} name [{name}] is {len(name)} characters; the limit is {limit}.",
                "VALUE_OUT_OF_BOUNDS",
            )
        ]
    if not NAME.fullmatch(name):
        return [
            message(
                path,
                f"{what} has invalid name [{name}]. Names must start with an "
                "alphabetic character and contain only alphanumeric characters "
                "and underscores.",
                "NAME_INVALID",
            )
        ]
    if name.startswith(RESERVED_PREFIXES):
        prefix = next(p for p in RESERVED_PREFIXES if name.startswith(p))
        return [
            message(
                path,
                f"{what} name [{name}] starts with the reserved prefix [{prefix}].",
                "NAME_RESERVED",
            )
        ]
    if name in reserved:
        return [message(path, f"{what} name [{name}] is reserved.", "NAME_RESERVED")]
    return []


def check_value(path: str, value: object, limit: int) -> list[Message]:
    if isinstance(value, str) and len(value) > limit:
        return [
            message(
                path,
                f"Value is {len(value)} characters; the limit is {limit}.",
                "VALUE_OUT_OF_BOUNDS",
            )
        ]
    if value is not None and not isinstance(value, (str, int, float, bool)):
        return [
            message(
                path,
                f"Value must be a string or a number, got {type_name(value)}.",
                "VALUE_INVALID",
            )
        ]
    return []


def check_params(path: str, params: object) -> list[Message]:
    if params is None:
        return []
    if not isinstance(params, dict):
        return [message(path, "params must be an object.", "VALUE_INVALID")]
    out: list[Message] = []
    if len(params) > MAX_PARAMS:
        out.append(
            message(
                path,
                f"Event has {len(params)} parameters; the limit is {MAX_PARAMS}.",
                "EXCEEDED_MAX_ENTITIES",
            )
        )
    for name, value in params.items():
        where = f"{path}.{name}"
        out += check_name(where, name, "Parameter", MAX_NAME, RESERVED_PARAMS)
        if name == "items":
            out += check_items(where, value)
        else:
            out += check_value(where, value, MAX_PARAM_VALUE)
    return out


def check_items(path: str, items: object) -> list[Message]:
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return [message(path, "items must be an array of objects.", "VALUE_INVALID")]
    out: list[Message] = []
    for i, item in enumerate(items):
        custom = [k for k in item if not k.startswith("item_")]
        if len(custom) > MAX_ITEM_PARAMS:
            out.append(
                message(
                    f"{path}[{i}]",
                    f"Item has {len(custom)} custom parameters; the limit is "
                    f"{MAX_ITEM_PARAMS}.",
                    "EXCEEDED_MAX_ENTITIES",
                )
            )
        for name, value in item.items():
            out += check_value(f"{path}[{i}].{name}", value, MAX_PARAM_VALUE)
    return out


def check_user_properties(properties: object) -> list[Message]:
    path = "user_properties"
    if properties is None:
        return []
    if not isinstance(properties, dict):
        return [message(path, "user_properties must be an object.", "VALUE_INVALID")]
    out: list[Message] = []
    if len(properties) > MAX_USER_PROPERTIES:
        out.append(
            message(
                path,
                f"{len(properties)} user properties; the limit is "
                f"{MAX_USER_PROPERTIES}.",
                "EXCEEDED_MAX_ENTITIES",
            )
        )
    for name, entry in properties.items():
        where = f"{path}.{name}"
        out += check_name(
            where,
            name,
            "User property",
            MAX_USER_PROPERTY_NAME,
            RESERVED_USER_PROPERTIES,
        )
        if not isinstance(entry, dict) or "value" not in entry:
            out.append(
                message(where, 'A user property is {"value": ...}.', "VALUE_REQUIRED")
            )
            continue
        out += check_value(f"{where}.value", entry["value"], MAX_USER_PROPERTY_VALUE)
    return out


def check_timestamp(path: str, value: object, now_micros: int) -> list[Message]:
    if value is None:
        return []
    if type(value) is not int:
        return [
            message(
                path,
                "timestamp_micros must be an integer (microseconds since the epoch).",
                "VALUE_INVALID",
            )
        ]
    if not now_micros - MAX_AGE_MICROS <= value <= now_micros + 60_000_000:
        return [
            message(
                path,
                "timestamp_micros may be up to 72 hours in the past, not in the "
                "future.",
                "VALUE_OUT_OF_BOUNDS",
            )
        ]
    return []


def validate(
    body: Any, query: dict[str, str], size: int, now_micros: int
) -> list[Message]:
    """Google's validation messages for a Measurement Protocol request."""
    out: list[Message] = []
    if size > MAX_BODY_BYTES:
        out.append(
            message(
                "",
                f"The body is {size:,} bytes; the limit is {MAX_BODY_BYTES:,}.",
                "VALUE_OUT_OF_BOUNDS",
            )
        )
    if not isinstance(body, dict):
        return [*out, message("", "The body must be a JSON object.", "VALUE_INVALID")]
    if not query.get("measurement_id") and not query.get("firebase_app_id"):
        out.append(
            message(
                "measurement_id",
                "Measurement requires a measurement_id (web) or firebase_app_id (app) "
                "query parameter.",
                "VALUE_REQUIRED",
            )
        )
    if not body.get("client_id") and not body.get("app_instance_id"):
        out.append(
            message(
                "client_id",
                "Measurement requires a client_id (web) or app_instance_id (app).",
                "VALUE_REQUIRED",
            )
        )
    for field in ("client_id", "app_instance_id", "user_id"):
        value = body.get(field)
        if value is not None and not isinstance(value, str):
            out.append(message(field, f"{field} must be a string.", "VALUE_INVALID"))
    user_id = body.get("user_id")
    if isinstance(user_id, str) and len(user_id) > MAX_USER_ID:
        out.append(
            message(
                "user_id",
                f"user_id is {len(user_id)} characters; the limit is {MAX_USER_ID}.",
                "VALUE_OUT_OF_BOUNDS",
            )
        )
    out += check_timestamp("timestamp_micros", body.get("timestamp_micros"), now_micros)
    out += check_user_properties(body.get("user_properties"))
    events = body.get("events")
    if not isinstance(events, list) or not events:
        out.append(
            message(
                "events", "Measurement requires at least one event.", "VALUE_REQUIRED"
            )
        )
        return out
    if len(events) > MAX_EVENTS:
        out.append(
            message(
                "events",
                f"{len(events)} events; the limit is {MAX_EVENTS} per request.",
                "EXCEEDED_MAX_ENTITIES",
            )
        )
    for i, event in enumerate(events):
        path = f"events[{i}]"
        if not isinstance(event, dict):
            out.append(message(path, "An event must be an object.", "VALUE_INVALID"))
            continue
        out += check_name(
            f"{path}.name", event.get("name"), "Event", MAX_NAME, RESERVED_EVENTS
        )
        out += check_params(f"{path}.params", event.get("params"))
        out += check_timestamp(
            f"{path}.timestamp_micros", event.get("timestamp_micros"), now_micros
        )
    return out


class ValidationMessage(BaseModel):
    fieldPath: str
    description: str
    validationCode: str


class ValidationAnswer(BaseModel):
    validationMessages: list[ValidationMessage]


async def debug(request: Request) -> Response:
    config = request.app.service.config
    _, body = await read_foreign(request.scope, request.receive, config.max_body_bytes)
    try:
        data = parse_json(body)
    except ApiError as exc:
        if exc.status_code != 422:
            raise
        data = orjson.loads(body)  # an integer past 64 bits: still JSON to validate
    messages = validate(
        data, query_of(request.scope), len(body), time.time_ns() // 1000
    )
    return Response(
        orjson.dumps({"validationMessages": messages}), media_type="application/json"
    )


DOC = Doc(
    "GA4 Measurement Protocol validation: stores nothing",
    {
        200: ("Google's validation messages; none when valid", ValidationAnswer),
        **{status: BODY_ERRORS[status] for status in (400, 408, 413, 415)},
    },
    body={"type": "object"},
    description="Names (40 characters, a letter first, letters, digits and "
    "underscores; reserved names and the google_, ga_, firebase_ prefixes), 25 "
    "events, 25 parameters, 25 user properties, value lengths (100; user "
    "properties 36), required client_id or app_instance_id and events.",
)
