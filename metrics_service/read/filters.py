from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.datastructures import QueryParams

from metrics_service.http.errors import ApiError
from metrics_service.store.chunk import Entry
from metrics_service.store.ring import Ring

UTC = dt.UTC
FILTER_PARAMS = frozenset(
    {"event", "visitor_id", "event_id", "since", "until", "after"}
)
# Read endpoints may be opened with `?token=` (EventSource cannot send headers).
ALWAYS_ALLOWED = frozenset({"token"})


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """Conditions combined with AND; `events` matches any of its names."""

    events: frozenset[str] | None = None
    visitor_id: str | None = None
    event_id: str | None = None
    since: float | None = None
    until: float | None = None
    after: int | None = None
    meta: tuple[tuple[tuple[str, ...], str], ...] = ()

    @property
    def empty(self) -> bool:
        return self == _NO_FILTERS

    def __call__(self, entry: Entry) -> bool:
        if self.after is not None and entry.seq <= self.after:
            return False
        if self.events is not None and entry.event not in self.events:
            return False
        if self.visitor_id is not None and entry.visitor_id != self.visitor_id:
            return False
        if self.event_id is not None and entry.event_id != self.event_id:
            return False
        if self.since is not None and entry.ts < self.since:
            return False
        if self.until is not None and entry.ts > self.until:
            return False
        if self.meta:
            # Parsed only now, and only for entries that passed the cheap checks.
            metadata = orjson.loads(entry.line).get("metadata")
            return all(
                _string_form(_lookup(metadata, path)) == value
                for path, value in self.meta
            )
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
            since=self.since,
            until=self.until,
        )
        rest = dataclasses.replace(self, events=None, after=None)
        return candidates if rest.empty else [e for e in candidates if rest(e)]


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
    for name in sorted(set(params.keys())):
        given = params.getlist(name)
        if name.startswith("meta."):
            path = tuple(name[5:].split("."))
            if not all(path):
                errors.append(_error(name, "expected meta.<key> or meta.<a.b.c>"))
            elif len(given) > 1:
                errors.append(_error(name, "given more than once"))
            else:
                meta.append((path, given[0]))
            continue
        if name not in allowed:
            errors.append(_error(name, f"unknown parameter {name!r}"))
            continue
        if name not in FILTER_PARAMS:
            continue
        if name == "event":
            values["events"] = frozenset(given)
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
    return Filters(**values, meta=tuple(meta))


def flat_params(filters: dict[str, Any]) -> list[tuple[str, str]]:
    """Keyword filters as query pairs: lists repeat, `meta={"a": {"b": 1}}` → meta.a.b=1."""
    pairs: list[tuple[str, str]] = []
    for name, value in filters.items():
        if value is None:
            continue
        if name == "meta":
            pairs.extend((f"meta.{path}", text) for path, text in _flat_meta(value, ""))
        elif isinstance(value, (list, tuple, set, frozenset)):
            pairs.extend((name, _query_text(item)) for item in value)
        else:
            pairs.append((name, _query_text(value)))
    return pairs


def _flat_meta(value: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        path = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            out.extend(_flat_meta(item, path + "."))
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
