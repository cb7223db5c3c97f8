"""The filters' query-string form: parse_filters() reads it from a request (a 422
naming each bad parameter), flat_params() writes it from keyword filters (the client's).

What a parsed filter matches is read/filters.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.datastructures import QueryParams

from metrics_service.http.errors import ApiError
from metrics_service.read.filters import NUMERIC_OPS, Condition, Filters, _parse_number

UTC = dt.UTC
FILTER_PARAMS = frozenset(
    {"event", "visitor_id", "event_id", "test_id", "since", "until", "after"}
)
# Read endpoints may be opened with `?token=` (EventSource cannot send headers).
ALWAYS_ALLOWED = frozenset({"token"})
# Fields that take an operator suffix (`visitor_id__prefix=v-`), as `meta.<path>` does.
OPERATOR_FIELDS = ("event", "visitor_id", "event_id", "test_id")
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "prefix", "contains", "exists")


def invalid(name: str, msg: str) -> ApiError:
    """422 for one bad query parameter."""
    return ApiError(422, [_error(name, msg)])


def _error(name: str, msg: str) -> dict[str, Any]:
    return {"loc": ["query", name], "msg": msg}


def parse_time(raw: str) -> float:
    """ISO-8601 to Unix seconds; naive means UTC. A `+` sent unescaped arrives as a space."""
    text = raw.strip()
    if " " in text and text.count(":") >= 2 and text[-6] == " ":
        text = text[:-6] + "+" + text[-5:]
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected an ISO-8601 date-time, got {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_filters(params: QueryParams, extra: Iterable[str] = ()) -> Filters:
    """Filters from the query string; unknown or bad parameters raise a 422 naming them.

    `extra` lists the endpoint's own parameters, which are allowed and left alone.
    """
    allowed = FILTER_PARAMS | ALWAYS_ALLOWED | set(extra)
    errors: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    meta: list[tuple[tuple[str, ...], str]] = []
    where: list[Condition] = []
    for name in sorted(set(params.keys())):
        given = params.getlist(name)
        if name.startswith("meta."):
            path = tuple(name[5:].split("."))
            key, op = split_operator(path[-1])
            if not all(path) or not key:
                errors.append(_error(name, "expected meta.<key> or meta.<a.b.c>"))
            elif len(given) > 1:
                errors.append(_error(name, "given more than once"))
            elif op is None:
                meta.append((path, given[0]))
            else:
                found = condition(name, "meta", (*path[:-1], key), op, given[0])
                if isinstance(found, Condition):
                    where.append(found)
                else:
                    errors.append(found)
            continue
        field, op = split_operator(name)
        if op is not None and field in OPERATOR_FIELDS:
            if len(given) > 1:
                errors.append(_error(name, "given more than once"))
                continue
            found = condition(name, field, (), op, given[0])
            if not isinstance(found, Condition):
                errors.append(found)
            elif field == "event" and op in ("eq", "in"):
                # Served by the ring's event index, like `event=`.
                names = found.operand
                names = frozenset({names}) if isinstance(names, str) else names
                assert isinstance(names, frozenset)
                before = values.get("events")
                values["events"] = names if before is None else before & names
            else:
                where.append(found)
            continue
        if name not in allowed:
            errors.append(_error(name, f"unknown parameter {name!r}"))
            continue
        if name not in FILTER_PARAMS:
            continue
        if name == "event":
            before = values.get("events")
            values["events"] = (
                frozenset(given) if before is None else before & set(given)
            )
            continue
        if len(given) > 1:
            errors.append(_error(name, "given more than once"))
            continue
        raw = given[0]
        if name in ("since", "until"):
            try:
                values[name] = parse_time(raw)
            except ValueError as exc:
                errors.append(_error(name, str(exc)))
        elif name == "after":
            try:
                values["after"] = int(raw)
            except ValueError:
                errors.append(_error(name, f"expected an integer seq, got {raw!r}"))
        else:
            values[name] = raw
    if errors:
        raise ApiError(422, errors)
    return Filters(**values, meta=tuple(meta), where=tuple(where))


def split_operator(name: str) -> tuple[str, str | None]:
    """("amount", "gte") for "amount__gte"; (name, None) without a suffix. A leading
    `__` is part of the key (`__typename`), never an operator."""
    key, sep, op = name.rpartition("__")
    if not sep or not key.strip("_"):
        return name, None
    return key, op


def condition(
    name: str, field: str, path: tuple[str, ...], op: str, raw: str
) -> Condition | dict[str, Any]:
    """The parsed condition, or the error naming the parameter."""
    operand: str | frozenset[str] | int | float | bool
    if op not in OPERATORS:
        known = ", ".join(f"__{o}" for o in OPERATORS)
        return _error(
            name,
            f"unknown operator '__{op}' (known: {known}); for a key that contains"
            " '__' itself, add '__eq'",
        )
    if op in NUMERIC_OPS:
        number = _parse_number(raw.strip())
        if number is None:
            return _error(name, f"expected a number, got {raw!r}")
        operand = number
    elif op == "exists":
        if raw not in ("true", "false"):
            return _error(name, f"expected true or false, got {raw!r}")
        operand = raw == "true"
    elif op == "in":
        operand = frozenset(raw.split(","))
    else:
        operand = raw
    return Condition(field, path, op, operand)


def flat_params(filters: dict[str, Any]) -> list[tuple[str, str]]:
    """Keyword filters as query pairs: lists repeat, `meta={"a": {"b": 1}}` → meta.a.b=1,
    operators pass through (`visitor_id__prefix="v-"`, `meta={"amount__gte": 10}`), and an
    `__in` list is joined with commas (`meta={"plan__in": ["pro", "team"]}`)."""
    pairs: list[tuple[str, str]] = []
    for name, value in filters.items():
        if value is None:
            continue
        if name == "meta":
            pairs.extend((f"meta.{path}", text) for path, text in _flat_meta(value, ""))
        elif name.endswith("__in") and isinstance(value, _LISTS):
            pairs.append((name, _joined(value)))
        elif isinstance(value, _LISTS):
            pairs.extend((name, _query_text(item)) for item in value)
        else:
            pairs.append((name, _query_text(value)))
    return pairs


_LISTS = (list, tuple, set, frozenset)


def _joined(values: Iterable[Any]) -> str:
    return ",".join(_query_text(item) for item in values)


def _flat_meta(value: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            out.extend(_flat_meta(item, path + "."))
        elif path.endswith("__in") and isinstance(item, _LISTS):
            out.append((path, _joined(item)))
        else:
            out.append((path, _query_text(item)))
    return out


def _query_text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        text: str = value.isoformat()
        return text
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
