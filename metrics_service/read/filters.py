"""What a filter matches: Filters (conditions combined with AND) and its operator
Conditions, checked against a ring entry and, only when needed, its metadata.

How a request's query string becomes Filters is read/query.py."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import orjson

from metrics_service.store.chunk import Entry
from metrics_service.store.ring import Ring

NUMERIC_OPS = frozenset({"gt", "gte", "lt", "lte"})
# A JSON number, as text: what the numeric operators accept in a string value too.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """One operator condition: `field` is "meta" (then `path` is the metadata path) or
    one of OPERATOR_FIELDS (read/query.py); `operand` is already parsed for `op`."""

    field: str
    path: tuple[str, ...]
    op: str
    operand: str | frozenset[str] | int | float | bool

    def test(self, value: Any) -> bool:
        """Whether a value (MISSING for an absent key) satisfies the condition.

        A missing key satisfies only `ne` and `exists=false`; numeric operators compare
        numbers and numeric strings and never match anything else; the others compare
        the value's string form, as a plain `meta.x=v` does.
        """
        op = self.op
        if value is MISSING:
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
    return MISSING if entry.event_id is None else entry.event_id


def _tagged(line: bytes, test_id: str) -> bool:
    """Whether the stored line's `test_id` is `test_id`."""
    # The entry keeps no test_id: a byte search as the collector writes the key
    # leaves few lines, which are then read exactly. find(), not `in`: on CPython
    # 3.11 bytes.__contains__ first tries its argument as an int, raising and
    # clearing a TypeError.
    if line.find(tag_needle(test_id)) < 0:
        return False
    return bool(orjson.loads(line).get("test_id") == test_id)


@functools.lru_cache(maxsize=256)  # a waiter's filter is checked on every write
def tag_needle(test_id: str) -> bytes:
    """`"test_id":"<value>"` as the collector writes it (see store/line.py)."""
    return b'"test_id":' + orjson.dumps(test_id)


def _test_id(line: bytes) -> Any:
    if line.find(b'"test_id"') < 0:  # not `in`: see _tagged()
        return MISSING
    value = orjson.loads(line).get("test_id", MISSING)
    return value if value is MISSING or isinstance(value, str) else MISSING


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
# An absent key, which only `__ne` and `__exists=false` match.
MISSING = object()


def _lookup(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return MISSING
        value = value[key]
    return value


def _string_form(value: Any) -> str | None:
    if value is MISSING:
        return None
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
