"""The one decoder: a request body to a group of stored events, or one ApiError.

decode() tries the fast path (ingest/fast.py) and otherwise takes the full path here:
orjson, pydantic's BehaviorEvent, the policy, and every message a client may need.
The full path also takes what the fast path leaves: timestamp or sent_at, NDJSON,
sampling and redaction.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import orjson
from pydantic import ValidationError

from metrics_service import _native
from metrics_service.http.body import NDJSON_TYPES
from metrics_service.http.errors import ApiError
from metrics_service.ingest import fast, test_tag
from metrics_service.ingest.clock import Received, corrected
from metrics_service.ingest.contract import BehaviorEvent, PlainEvent
from metrics_service.ingest.policy import Policy
from metrics_service.store.line import Group, escape_separators, head


def decode(
    body: bytes,
    kind: str,
    *,
    batch: bool,
    policy: Policy,
    max_batch: int,
    max_event_bytes: int,
    received: Received,
    user_agent: str | None,
    test_id: str | None = None,
) -> tuple[Group, int]:
    """The body's accepted events as one group, and how many sampling dropped;
    `test_id` (ingest/test_tag.py) is stamped on each.

    Raises ApiError: 400 malformed, 422 invalid (every problem at once).
    """
    if policy.plain and kind not in NDJSON_TYPES:
        group = fast.group(
            body,
            batch=batch,
            max_batch=max_batch,
            max_event_bytes=max_event_bytes,
            received=received,
            header_user_agent=user_agent,
            test_id=test_id,
        )
        if group is not None:
            return group, 0
    objs = parse_batch(body, kind, max_batch) if batch else [parse_json(body)]
    events = check_events(objs, policy, max_event_bytes, batch=batch)
    return to_group(
        events,
        policy,
        received=received,
        header_user_agent=user_agent,
        batch=batch,
        test_id=test_id,
    )


def parse_json(body: bytes, where: str = "") -> Any:
    if not body.strip():
        raise ApiError(400, f"{where}malformed JSON: the body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            # orjson says "surrogates not allowed" at char 0 for any bad byte: say where.
            try:
                body.decode()
            except UnicodeDecodeError as bad:
                raise ApiError(
                    400,
                    f"{where}body is not valid UTF-8: byte {bad.start:,} "
                    f"(0x{body[bad.start]:02x}) cannot be decoded",
                ) from None
            raise ApiError(400, f"{where}body is not valid UTF-8: {exc}") from None
        raise ApiError(400, f"{where}malformed JSON: {exc}") from None
    check_integers(body, where)
    return value


_INT_RANGE = range(-(2**63), 2**64)


def check_integers(body: bytes, where: str = "") -> None:
    """A 422 for an integer past 64 bits in a JSON body, which orjson would read as a
    float, silently dropping digits."""
    if not _native.long_digits(body):
        return
    # Read again by the standard library, which keeps such integers exact.
    try:
        exact = json.loads(body)
    except (ValueError, RecursionError):
        return  # orjson accepted it; nothing here to add
    stack = [exact]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif type(item) is int and item not in _INT_RANGE:
            digits = str(item)
            shown = digits if len(digits) <= 30 else f"{digits[:27]}..."
            raise ApiError(
                422,
                f"{where}integer {shown} ({len(digits.lstrip('-'))} digits) does not "
                "fit in 64 bits and would lose precision; send it as a string",
            )


def parse_batch(body: bytes, kind: str, max_batch: int) -> list[Any]:
    """A JSON array, `{"events": [...]}` or NDJSON (blank lines skipped) as a list."""
    if kind in NDJSON_TYPES:
        return parse_ndjson(body, max_batch)
    try:
        data = parse_json(body)
    except ApiError:
        # sendBeacon cannot set an NDJSON type without a preflight, so NDJSON
        # often arrives as text/plain: several lines that are not one JSON value.
        if kind in ("text/plain", "") and len(body.strip().splitlines()) > 1:
            return parse_ndjson(body, max_batch)
        raise
    if isinstance(data, dict) and "events" in data:
        unknown = sorted(set(data) - {"events"})
        if unknown:
            raise ApiError(
                422, f"unknown field {unknown[0]!r} next to 'events'; send only events"
            )
        data = data["events"]
        if not isinstance(data, list):
            raise ApiError(422, f"'events' must be an array, got {type_name(data)}")
    elif not isinstance(data, list):
        raise ApiError(
            422,
            f'expected a JSON array of events, {{"events": [...]}} or NDJSON '
            f"(application/x-ndjson), got {type_name(data)}",
        )
    check_count(len(data), max_batch)
    return data


def parse_ndjson(body: bytes, max_batch: int) -> list[Any]:
    lines = [
        (number, line)
        for number, line in enumerate(body.split(b"\n"), 1)
        if line.strip()
    ]
    check_count(len(lines), max_batch)
    return [parse_json(line, f"line {number}: ") for number, line in lines]


def check_count(count: int, max_batch: int) -> None:
    if count == 0:
        raise ApiError(422, "the batch is empty; send at least one event")
    if count > max_batch:
        raise ApiError(
            422, f"batch has {count:,} events; the limit is {max_batch:,} events"
        )


# pydantic's messages that name a Python type, in JSON's words.
_PYTHON_WORDS = {
    "dict_type": "Input should be an object",
    "list_type": "Input should be an array",
    "int_type": "Input should be an integer",
    "float_type": "Input should be a number",
    "bool_type": "Input should be a boolean",
}


def error_items(exc: ValidationError, index: int | None = None) -> list[dict[str, Any]]:
    """pydantic errors as `{"loc", "msg", "type"}` entries (plus `index` in a batch)."""
    items: list[dict[str, Any]] = []
    for err in exc.errors(
        include_url=False, include_context=False, include_input=False
    ):
        loc = list(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and loc[-1] == test_tag.QUERY:
            msg = (
                f"unknown field {loc[-1]!r}: the collector sets it from the "
                f"{test_tag.HEADER} header, the {test_tag.QUERY} query parameter "
                f"or the {test_tag.COOKIE} cookie"
            )
        elif err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}: free-form data belongs in metadata"
        elif err["type"] in _PYTHON_WORDS:
            msg = _PYTHON_WORDS[err["type"]]  # pydantic speaks Python: "dictionary"
        item: dict[str, Any] = {"loc": loc, "msg": msg, "type": err["type"]}
        if index is not None:
            item = {"index": index, **item}
        items.append(item)
    return items


def check_events(
    objs: list[Any], policy: Policy, max_event_bytes: int, *, batch: bool
) -> list[BehaviorEvent]:
    """Validate every event; all problems at once as one 422 (with `index` in a batch)."""
    problems: list[dict[str, Any]] = []
    events: list[BehaviorEvent] = []
    # BehaviorEvent.model_validate() is this plus argument checks on every call.
    validate = BehaviorEvent.__pydantic_validator__.validate_python
    checks = policy.checks
    dumps = orjson.dumps
    for i, obj in enumerate(objs):
        index = i if batch else None
        if not isinstance(obj, dict):
            msg = f"expected a JSON object, got {type_name(obj)}"
            if not batch:
                raise ApiError(422, msg)
            problems.append({"index": i, "loc": [], "msg": msg, "type": "object_type"})
            continue
        try:
            size = len(dumps(obj))
        except orjson.JSONEncodeError as exc:
            problems.append(_at(index, [], f"cannot be stored as JSON: {exc}", "json"))
            continue
        if size > max_event_bytes:
            msg = (
                f"event is {size:,} bytes serialized; "
                f"the limit is {max_event_bytes:,} bytes"
            )
            problems.append(_at(index, [], msg, "event_too_large"))
            continue
        try:
            event: BehaviorEvent = validate(obj)
        except ValidationError as exc:
            problems.extend(error_items(exc, index))
            continue
        refused = policy.problems(event) if checks else None
        if refused:
            problems.extend(
                item if index is None else {"index": index, **item} for item in refused
            )
            continue
        events.append(event)
    if problems:
        raise ApiError(422, problems)
    return events


def _at(index: int | None, loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    item: dict[str, Any] = {"loc": loc, "msg": msg, "type": kind}
    return item if index is None else {"index": index, **item}


def to_group(
    events: list[BehaviorEvent],
    policy: Policy,
    *,
    received: Received,
    header_user_agent: str | None,
    batch: bool,
    test_id: str | None = None,
) -> tuple[Group, int]:
    """The events sampling keeps (redacted) as a group, and how many it dropped;
    `test_id` (ingest/test_tag.py) is stamped on each."""
    rows: list[tuple[float, str, str, str | None, bytes, bytes]] = []
    problems: list[dict[str, Any]] = []
    redacts, samples = policy.redacts, policy.samples
    for i, event in enumerate(events):
        try:
            row = to_row(
                policy.redact(event) if redacts else event,
                received=received,
                header_user_agent=header_user_agent,
                test_id=test_id,
            )
        except ApiError as exc:
            items = (
                exc.detail
                if isinstance(exc.detail, list)
                else [_at(None, [], str(exc.detail), "json")]
            )
            problems.extend({"index": i, **item} if batch else item for item in items)
            continue
        if not samples or policy.keep(event):
            rows.append(row)
    if problems:
        raise ApiError(422, problems)
    ts, names, visitor_ids, event_ids, heads, bodies = (
        ([], [], [], [], [], []) if not rows else map(list, zip(*rows, strict=True))
    )
    group = Group(received.iso, ts, names, visitor_ids, event_ids, heads, bodies)
    return group, len(events) - len(rows)


_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
}


def type_name(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages: never Python's."""
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), "a value")


def to_row(
    event: BehaviorEvent,
    *,
    received: Received,
    header_user_agent: str | None,
    test_id: str | None = None,
) -> tuple[float, str, str, str | None, bytes, bytes]:
    """ts, event, visitor_id, event_id, and the stored head and body."""
    if event.timestamp is None and event.sent_at is None:
        # The common case: the receive time, already formatted for this request.
        stamp, ts, stored_head = received.text, received.ts, received.head
    else:
        try:
            stamp, ts = corrected(event.timestamp, event.sent_at, received)
            stored_head = head(stamp)
        except OverflowError:
            raise ApiError(
                422,
                [{"loc": ["sent_at"], "msg": "moves timestamp out of range"}],
            ) from None
    if "user_agent" in event.model_fields_set:
        user_agent = event.user_agent
    else:
        user_agent = header_user_agent
    plain = PlainEvent(
        event=event.event,
        visitor_id=event.visitor_id,
        event_id=event.event_id,
        metadata=event.metadata,
        user_agent=user_agent,
    )
    if test_id is not None:
        plain.test_id = test_id
    try:
        # The fast path's struct and encoder, so every stored line is written alike.
        body = escape_separators(_encode(plain))
    except (msgspec.EncodeError, OverflowError) as exc:
        raise ApiError(422, f"metadata cannot be stored as JSON: {exc}") from None
    return ts, event.event, event.visitor_id, event.event_id, stored_head, body[1:]


_encode = msgspec.json.Encoder().encode
