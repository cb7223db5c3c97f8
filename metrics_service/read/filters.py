from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.datastructures import QueryParams

from metrics_service.http.errors import ApiError
from metrics_service.store.chunk import Entry
from metrics_service.store.ring import Ring

UTC = dt.UTC
FILTER_PARAMS = frozenset(
    {"event", "visitor_id", "event_id", "test_id", "since", "until", "after"}
)
# Read endpoints may be opened with `?token=` (EventSource cannot send headers).
ALWAYS_ALLOWED = frozenset({"token"})
# Fields that take an operator suffix (`visitor_id__prefix=v-`), as `meta.<path>` does.
OPERATOR_FIELDS = ("event", "visitor_id", "event_id", "test_id")
NUMERIC_OPS = frozenset({"gt", "gte", "lt", "lte"})
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "prefix", "contains", "exists")
# A JSON number, as text: what the numeric operators accept in a string value too.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """One operator condition: `field` is "meta" (then `path` is the metadata path) or
    one of OPERATOR_FIELDS; `operand` is already parsed for `op`."""

    field: str
    path: tuple[str, ...]
    op: str
    operand: str | frozenset[str] | int | float | bool

    def test(self, value: Any) -> bool:
        """Whether a value (_MISSING for an absent key) satisfies the condition.

        A missing key satisfies only `ne` and `exists=false`; numeric operators compare
        numbers and numeric strings and never match anything else; the others compare
        the value's string form, as a plain `meta.x=v` does.
        """
        op = self.op
        if value is _MISSING:
            return op == "ne" or (op == "exists" and self.operand is False)
        if op == "exists":
            return self.operand is True
        if op in NUMERIC_OPS:
            number = _number(value)
            if number is None:
                return False
            operand: Any = self.operand
            if op == "gt":
                return bool(number > operand)
            if op == "gte":
                return bool(number >= operand)
            if op == "lt":
                return bool(number < operand)
            return bool(number <= operand)
        text = _string_form(value)
        assert text is not None
        if op == "eq":
            return text == self.operand
        if op == "ne":
            return text != self.operand
        if op == "in":
            return text in self.operand  # type: ignore[operator]
        if op == "prefix":
            return text.startswith(self.operand)  # type: ignore[arg-type]
        return self.operand in text  # type: ignore[operator]  # contains


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """Conditions combined with AND; `events` matches any of its names.

    `meta` holds the plain `meta.<path>=value` filters, `where` the operator ones
    (`meta.amount__gte=10`, `visitor_id__prefix=v-`).
    """

    events: frozenset[str] | None = None
    visitor_id: str | None = None
    event_id: str | None = None
    test_id: str | None = None
    since: float | None = None
    until: float | None = None
    after: int | None = None
    meta: tuple[tuple[tuple[str, ...], str], ...] = ()
    where: tuple[Condition, ...] = ()

    @property
    def empty(self) -> bool:
        return self == _NO_FILTERS

    @property
    def reads_metadata(self) -> bool:
        """Whether matching needs an entry's metadata decoded."""
        return bool(self.meta) or any(c.field == "meta" for c in self.where)

    def without_metadata(self) -> Filters:
        """The conditions that need no metadata (the cheap ones)."""
        return dataclasses.replace(
            self, meta=(), where=tuple(c for c in self.where if c.field != "meta")
        )

    def metadata_matches(self, metadata: Any) -> bool:
        """The metadata conditions, given an entry's decoded metadata."""
        for path, value in self.meta:
            if _string_form(_lookup(metadata, path)) != value:
                return False
        for condition in self.where:
            if condition.field == "meta" and not condition.test(
                _lookup(metadata, condition.path)
            ):
                return False
        return True

    def __call__(self, entry: Entry) -> bool:
        if self.after is not None and entry.seq <= self.after:
            return False
        if self.events is not None and entry.event not in self.events:
            return False
        if self.visitor_id is not None and entry.visitor_id != self.visitor_id:
            return False
        if self.event_id is not None and entry.event_id != self.event_id:
            return False
        if self.test_id is not None and not _tagged(entry.line, self.test_id):
            return False
        if self.since is not None and entry.ts < self.since:
            return False
        if self.until is not None and entry.ts > self.until:
            return False
        on_meta = False
        for condition in self.where:
            field = condition.field
            if field == "meta":
                on_meta = True
            elif not condition.test(_field(entry, field)):
                return False
        if self.meta or on_meta:
            # Parsed only now, and only for entries that passed the cheap checks.
            return self.metadata_matches(orjson.loads(entry.line).get("metadata"))
        return True

    def scan(self, ring: Ring) -> list[Entry]:
        """Matching entries in the ring, oldest first.

        The ring serves `event` and `after` from its indexes; the rest is checked here.
        """
        candidates = ring.select(
            self.events,
            self.after,
            visitor_id=self.visitor_id,
            event_id=self.event_id,
            test_id=self.test_id,
            since=self.since,
            until=self.until,
        )
        rest = dataclasses.replace(self, events=None, after=None)
        return candidates if rest.empty else [e for e in candidates if rest(e)]


def _field(entry: Entry, name: str) -> Any:
    if name == "event":
        return entry.event
    if name == "visitor_id":
        return entry.visitor_id
    if name == "test_id":
        return _test_id(entry.line)
    return _MISSING if entry.event_id is None else entry.event_id


def _tagged(line: bytes, test_id: str) -> bool:
    """Whether the stored line's `test_id` is `test_id`."""
    # The entry keeps no test_id: a byte search as the collector writes the key
    # leaves few lines, which are then read exactly.
    if tag_needle(test_id) not in line:
        return False
    return bool(orjson.loads(line).get("test_id") == test_id)


@functools.lru_cache(maxsize=256)  # a waiter's filter is checked on every write
def tag_needle(test_id: str) -> bytes:
    """`"test_id":"<value>"` as the collector writes it (see store/line.py)."""
    return b'"test_id":' + orjson.dumps(test_id)


def _test_id(line: bytes) -> Any:
    if b'"test_id"' not in line:
        return _MISSING
    value = orjson.loads(line).get("test_id", _MISSING)
    return value if value is _MISSING or isinstance(value, str) else _MISSING


def _number(value: Any) -> int | float | None:
    """A JSON number, or a string holding one; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _parse_number(value)
    return None


def _parse_number(text: str) -> int | float | None:
    found = _NUMBER.fullmatch(text)
    if found is None:
        return None
    if found.group(1) is None and found.group(2) is None:
        return int(text)
    number = float(text)
    return number if math.isfinite(number) else None


_NO_FILTERS = Filters()
_MISSING = object()


def _lookup(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _string_form(value: Any) -> str | None:
    if value is _MISSING:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


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
            key, op = _split_operator(path[-1])
            if not all(path) or not key:
                errors.append(_error(name, "expected meta.<key> or meta.<a.b.c>"))
            elif len(given) > 1:
                errors.append(_error(name, "given more than once"))
            elif op is None:
                meta.append((path, given[0]))
            else:
                found = _condition(name, "meta", (*path[:-1], key), op, given[0])
                if isinstance(found, Condition):
                    where.append(found)
                else:
                    errors.append(found)
            continue
        field, op = _split_operator(name)
        if op is not None and field in OPERATOR_FIELDS:
            if len(given) > 1:
                errors.append(_error(name, "given more than once"))
                continue
            found = _condition(name, field, (), op, given[0])
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


def _split_operator(name: str) -> tuple[str, str | None]:
    """("amount", "gte") for "amount__gte"; (name, None) without a suffix. A leading
    `__` is part of the key (`__typename`), never an operator."""
    key, sep, op = name.rpartition("__")
    if not sep or not key.strip("_"):
        return name, None
    return key, op


def _condition(
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
