"""GET /api/metrics/behavior/wait: block until enough matching events are stored, or
settle an assertion: `absent=true` (none arrive), `exactly=true` (no more than `count`
after `settle` seconds of quiet), `sequence=a,b,c` (an ordered subsequence arrives)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from metrics_service.http.errors import ApiError
from metrics_service.http.responses import JSONResponse
from metrics_service.read.filters import MISSING, Filters, _lookup, _string_form
from metrics_service.read.hub import Full, Hub, ShuttingDown
from metrics_service.read.query import invalid, parse_filters
from metrics_service.read.rejected import (
    PARAMS,
    is_rejection_param,
    parse_rejection_filters,
)
from metrics_service.store.chunk import Entry
from metrics_service.store.quarantine import Rejection
from metrics_service.store.ring import Ring

MAX_TIMEOUT = 60.0
MAX_SEQUENCE = 100  # names in `sequence`
OWN_PARAMS = frozenset(
    {"count", "timeout", "absent", "exactly", "settle", "sequence", "per", "rejected"}
)
# With rejected=true: what a quarantine record can be waited on by.
REJECTED_PARAMS = frozenset({"count", "timeout", "absent", "rejected"}) | PARAMS


def _int_param(
    request: Request, name: str, default: int, minimum: int, maximum: int
) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, f"expected an integer, got {raw!r}") from None
    if value < minimum:
        raise invalid(name, f"must be at least {minimum}")
    if value > maximum:
        raise invalid(
            name,
            f"must be at most {maximum:,}, the ring's capacity"
            " (METRICS_RING_CAPACITY): no more events can ever be in the ring at once",
        )
    return value


def _seconds_param(
    request: Request, name: str, default: float, most: float, most_text: str
) -> float:
    """A number of seconds from 0 to `most` (named `most_text` in the 422)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise invalid(name, f"expected seconds, got {raw!r}") from None
    if not 0 <= value <= most or math.isnan(value):
        raise invalid(name, f"must be between 0 and {most_text}")
    return value


async def disconnected(receive: Receive) -> None:
    """Returns once the client has gone (a GET's body, if any, is read and dropped)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a body that never finished (408): gone too
        return


def _bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw not in ("true", "false"):
        raise invalid(name, f"expected true or false, got {raw!r}")
    return raw == "true"


def _sequence_param(request: Request) -> tuple[str, ...]:
    raw = request.query_params.get("sequence", "")
    names = tuple(raw.split(","))
    if not all(names):
        raise invalid(
            "sequence", f"expected event names separated by commas, got {raw!r}"
        )
    if len(names) > MAX_SEQUENCE:
        raise invalid("sequence", f"at most {MAX_SEQUENCE} names")
    return names


Key = Callable[[Entry], Hashable]


def _per_param(request: Request) -> Key | None:
    raw = request.query_params.get("per")
    if raw is None:
        return None
    if raw == "visitor_id":
        return lambda entry: entry.visitor_id
    path = tuple(raw[5:].split(".")) if raw.startswith("meta.") else ()
    if not path or not all(path):
        raise invalid("per", f"expected visitor_id or meta.<path>, got {raw!r}")

    def by_metadata(entry: Entry) -> Hashable:
        value = _lookup(orjson.loads(entry.line).get("metadata"), path)
        return None if value is MISSING else _string_form(value)

    return by_metadata


def _refuse_together(request: Request, mode: str, names: tuple[str, ...]) -> None:
    """A 422 naming the first of `names` given alongside `mode`."""
    for name in names:
        if name in request.query_params:
            raise invalid(name, f"cannot be combined with {mode}")


def _answer(events: list[Entry], status: int, matched: int | None = None) -> Response:
    body = {
        "matched": len(events) if matched is None else matched,
        "events": [orjson.Fragment(entry.line) for entry in events],
    }
    return JSONResponse(body, status)


async def wait(request: Request) -> Response:
    service = request.app.service
    params = request.query_params
    if _bool_param(request, "rejected"):
        return await _wait_rejected(request)
    if "status" in params:
        raise invalid("status", "only with rejected=true: stored events have none")
    filters = parse_filters(params, extra=OWN_PARAMS)
    absent = _bool_param(request, "absent")
    exactly = _bool_param(request, "exactly")
    sequence = "sequence" in params
    if absent:
        _refuse_together(
            request, "absent=true", ("count", "exactly", "settle", "sequence", "per")
        )
    if sequence:
        _refuse_together(request, "sequence", ("count", "exactly", "settle"))
        if filters.events is not None:
            raise invalid(
                "event" if "event" in params else "sequence",
                "cannot be combined with sequence: its names are the events waited for",
            )
    elif "per" in params:
        raise invalid("per", "only with sequence")
    if "settle" in params and not exactly:
        raise invalid("settle", "only with exactly=true")
    count = _int_param(request, "count", 1, 1, service.ring.capacity)
    timeout = _seconds_param(
        request, "timeout", 5.0, MAX_TIMEOUT, f"{MAX_TIMEOUT:g} seconds"
    )
    settle = _seconds_param(
        request, "settle", 0.0, timeout, f"the timeout ({timeout:g} seconds)"
    )
    names = _sequence_param(request) if sequence else ()
    per = _per_param(request)
    hub = service.hub
    if hub.full:
        raise ApiError(503, hub.full_message(), {"Retry-After": "1"})

    def gone() -> Awaitable[None]:
        return disconnected(request.receive)

    try:
        if sequence:
            return await _wait_sequence(
                hub, service.ring, filters, names, per, timeout, gone
            )
        # Scanning and registering happen in one loop step, so no entry falls between.
        existing = filters.scan(service.ring)
        if absent:
            found, events, seen = await hub.wait_counted(
                filters, 1, existing, timeout, gone
            )
            return _answer(events, 409, seen) if found else _answer([], 200)
        done, events, seen = await hub.wait_counted(
            filters, count, existing, timeout, gone
        )
        if not done:
            return _answer(events, 408)
        if not exactly:
            return _answer(events, 200)
        if seen > count:
            return _answer(events, 409, seen)
        # `settle` seconds of quiet: any further match is one too many.
        later = dataclasses.replace(filters, after=events[-1].seq)
        more, extra, n = await hub.wait_counted(
            later, 1, later.scan(service.ring), settle, gone
        )
        if more:
            return _answer((events + extra)[-hub.keep :], 409, seen + n)
        return _answer(events, 200)
    except ShuttingDown:
        raise ApiError(503, "the service is shutting down") from None
    except Full as exc:
        raise ApiError(503, str(exc), {"Retry-After": "1"}) from None


def _rejected_answer(
    records: list[Rejection], status: int, matched: int | None = None
) -> Response:
    body = {
        "matched": len(records) if matched is None else matched,
        "rejections": [orjson.Fragment(found.line) for found in records],
    }
    return JSONResponse(body, status)


async def _wait_rejected(request: Request) -> Response:
    """rejected=true: the same wait (or absent=true) over the quarantine's records."""
    service = request.app.service
    params = request.query_params
    for name in sorted(set(params.keys()) - REJECTED_PARAMS):
        if is_rejection_param(name):
            continue
        raise invalid(
            name,
            "cannot be combined with rejected=true: refusals are matched by "
            + ", ".join(sorted(PARAMS))
            + " (with operators on status, event, visitor_id and test_id)",
        )
    quarantine = service.quarantine
    if not quarantine.enabled:
        raise invalid("rejected", "the quarantine is off (METRICS_REJECT_CAPACITY=0)")
    filters = parse_rejection_filters(params, extra=REJECTED_PARAMS)
    absent = _bool_param(request, "absent")
    if absent and "count" in params:
        raise invalid("count", "cannot be combined with absent=true")
    count = _int_param(request, "count", 1, 1, 1 << 62)
    if count > quarantine.capacity:
        raise invalid(
            "count",
            f"must be at most {quarantine.capacity:,}, the quarantine's capacity"
            " (METRICS_REJECT_CAPACITY)",
        )
    timeout = _seconds_param(
        request, "timeout", 5.0, MAX_TIMEOUT, f"{MAX_TIMEOUT:g} seconds"
    )
    hub = service.hub
    if hub.full:
        raise ApiError(503, hub.full_message(), {"Retry-After": "1"})
    try:
        done, records, seen = await hub.wait_rejections(
            filters,
            count,
            filters.scan(quarantine.records),
            timeout,
            lambda: disconnected(request.receive),
        )
    except ShuttingDown:
        raise ApiError(503, "the service is shutting down") from None
    except Full as exc:
        raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
    if absent:
        return (
            _rejected_answer(records, 409, seen) if done else _rejected_answer([], 200)
        )
    return _rejected_answer(records, 200 if done else 408)


class _Progress:
    """How far each key (one visitor, or everyone) has come through `names`: the earliest
    matching subsequence is found by taking each name as soon as it comes."""

    def __init__(self, names: tuple[str, ...], key: Key | None, keep: int) -> None:
        self.names = names
        self.key = key
        self.keep = keep
        self.taken: dict[Hashable, list[Entry]] = {}
        self.arrived: list[Entry] = []

    def feed(self, entries: list[Entry]) -> list[Entry] | None:
        """The events forming the whole sequence, once they have arrived."""
        arrived = self.arrived
        arrived += entries
        if len(arrived) > self.keep:
            del arrived[: len(arrived) - self.keep]
        names, key, taken = self.names, self.key, self.taken
        for entry in entries:
            who = None if key is None else key(entry)
            if key is not None and who is None:
                continue  # no value to group it by
            got = taken.get(who)
            if got is None:
                got = taken[who] = []
            if entry.event == names[len(got)]:
                got.append(entry)
                if len(got) == len(names):
                    return got
        return None


async def _wait_sequence(
    hub: Hub,
    ring: Ring,
    filters: Filters,
    names: tuple[str, ...],
    per: Key | None,
    timeout: float,
    gone: Callable[[], Awaitable[Any]],
) -> Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wanted = dataclasses.replace(filters, events=frozenset(names))
    progress = _Progress(names, per, hub.keep)
    arrived = wanted.scan(ring)
    complete = progress.feed(arrived)
    last = arrived[-1].seq if arrived else wanted.after
    existing: list[Entry] = []
    # One waiter at a time, woken by each matching write; between two, the ring is read
    # again from the last seq seen, in the same loop step as the next registration.
    while complete is None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        later = dataclasses.replace(wanted, after=last)
        found, new, _ = await hub.wait_counted(later, 1, existing, remaining, gone)
        if not found:
            break
        complete = progress.feed(new)
        last = new[-1].seq
        existing = dataclasses.replace(wanted, after=last).scan(ring)
    if complete is not None:
        return _answer(complete, 200)
    return _answer(progress.arrived, 408)
