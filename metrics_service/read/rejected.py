"""GET and DELETE /api/metrics/behavior/rejected: the quarantine (store/quarantine.py)
read newest first, with its own filters; /wait and the stream use the same filters."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from metrics_service.http.errors import ApiError
from metrics_service.http.responses import JSONResponse
from metrics_service.read.filters import MISSING, Condition, Filters
from metrics_service.read.query import condition, invalid, split_operator
from metrics_service.service import Service
from metrics_service.store.quarantine import Rejection

PARAMS = frozenset({"status", "event", "visitor_id", "test_id", "after"})
# The record fields that take an operator suffix (`visitor_id__prefix=v-`), as the
# event filters' do (read/query.py).
OPERATOR_FIELDS = ("status", "event", "visitor_id", "test_id")
DEFAULT_LIMIT = 50


@dataclasses.dataclass(frozen=True, slots=True)
class RejectionFilters:
    """Conditions on a record, combined with AND; `statuses` and `events` match any
    of their values, `where` holds the operator conditions on OPERATOR_FIELDS."""

    statuses: frozenset[int] | None = None
    events: frozenset[str] | None = None
    visitor_id: str | None = None
    test_id: str | None = None
    after: int | None = None
    where: tuple[Condition, ...] = ()

    def __call__(self, found: Rejection) -> bool:
        if self.after is not None and found.id <= self.after:
            return False
        if self.statuses is not None and found.status not in self.statuses:
            return False
        if self.events is not None and found.event not in self.events:
            return False
        if self.visitor_id is not None and found.visitor_id != self.visitor_id:
            return False
        if self.test_id is not None and found.test_id != self.test_id:
            return False
        for where in self.where:
            value = getattr(found, where.field)
            if not where.test(MISSING if value is None else value):
                return False
        return True

    @classmethod
    def of_events(cls, filters: Filters) -> RejectionFilters:
        """The part of an event filter a record can be checked against (the stream's);
        the rest is about stored events only."""
        return cls(
            events=filters.events,
            visitor_id=filters.visitor_id,
            test_id=filters.test_id,
            where=tuple(c for c in filters.where if c.field in OPERATOR_FIELDS),
        )

    def scan(self, records: Iterable[Rejection]) -> list[Rejection]:
        """The matching records, oldest first."""
        return [found for found in records if self(found)]


def is_rejection_param(name: str) -> bool:
    """A filter of records: one of PARAMS, or an operator on one of OPERATOR_FIELDS."""
    return name in PARAMS or split_operator(name)[0] in OPERATOR_FIELDS


def parse_rejection_filters(
    params: QueryParams, extra: Iterable[str] = ()
) -> RejectionFilters:
    """The filters of the query; a 422 names each unknown or bad parameter."""
    allowed = PARAMS | set(extra)
    errors: list[dict[str, Any]] = []
    where: list[Condition] = []
    for name in sorted(set(params.keys()) - allowed):
        field, op = split_operator(name)
        if op is None or field not in OPERATOR_FIELDS:
            errors.append(
                {"loc": ["query", name], "msg": f"unknown parameter {name!r}"}
            )
        elif len(params.getlist(name)) > 1:
            errors.append({"loc": ["query", name], "msg": "given more than once"})
        else:
            found = condition(name, field, (), op, params[name])
            if isinstance(found, Condition):
                where.append(found)
            else:
                errors.append(found)
    if errors:
        raise ApiError(422, errors)
    statuses = None
    if "status" in params:
        try:
            statuses = frozenset(int(raw) for raw in params.getlist("status"))
        except ValueError:
            raise invalid("status", "expected an HTTP status such as 422") from None
    after = None
    if "after" in params:
        raw = params["after"]
        try:
            after = int(raw)
        except ValueError:
            raise invalid("after", f"expected an integer id, got {raw!r}") from None
    for name in ("visitor_id", "test_id", "after"):
        if len(params.getlist(name)) > 1:
            raise invalid(name, "given more than once")
    events = frozenset(params.getlist("event")) if "event" in params else None
    return RejectionFilters(
        statuses,
        events,
        params.get("visitor_id"),
        params.get("test_id"),
        after,
        tuple(where),
    )


def _limit(params: QueryParams, capacity: int) -> int:
    raw = params.get("limit")
    if raw is None:
        return min(DEFAULT_LIMIT, capacity)
    try:
        limit = int(raw)
    except ValueError:
        raise invalid("limit", f"expected an integer, got {raw!r}") from None
    if limit < 0:
        raise invalid("limit", "must not be negative")
    return min(limit, capacity)


async def rejected(request: Request) -> Response:
    service: Service = request.app.service
    quarantine = service.quarantine
    filters = parse_rejection_filters(request.query_params, extra={"limit"})
    limit = _limit(request.query_params, quarantine.capacity)
    matching = filters.scan(quarantine.records)
    newest = matching[: -limit - 1 : -1] if limit else []
    return JSONResponse(
        {
            "total": len(matching),
            "rejections": [orjson.Fragment(found.line) for found in newest],
            "last_id": quarantine.last_id,
        }
    )


async def clear(request: Request) -> Response:
    service: Service = request.app.service
    return JSONResponse({"ok": True, "cleared": service.quarantine.clear()})
