"""MetricsClient: the collector's HTTP API as assertions for tests (metrics_service.testing
re-exports it). Only the standard library at import time: httpx and orjson are imported
when a client is first used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

HEALTH_PATH = "/api/metrics/behavior/health"


def _query(filters: Mapping[str, Any]) -> list[tuple[str, str]]:
    # The app's own encoding of filters (lists repeat, meta.a.b=1); imported on first
    # use because it brings the app's modules with it.
    from metrics_service.read.filters import flat_params

    return flat_params(dict(filters))


class MetricsClient:
    """A client for the collector's HTTP API, made for assertions in tests.

    Filters are keyword arguments: `event="signup"` (or a list: any of),
    `visitor_id`, `event_id`, `since`/`until` (ISO string or datetime), `after`
    (a seq from `mark()`), and `meta={"plan": "pro"}` for `meta.plan=pro`.

    `token` is sent as `Authorization: Bearer <token>` on every request (the
    collector's METRICS_READ_TOKEN); `ingest_token`, when given, replaces it on
    `post()` (METRICS_INGEST_TOKEN, when the two differ).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        ingest_token: str | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._post_headers = (
            {"Authorization": f"Bearer {ingest_token}"} if ingest_token else {}
        )
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=headers
        )

    def close(self) -> None:
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        response = self._http.get(HEALTH_PATH)
        body: dict[str, Any] = response.json()
        return body

    def post(self, event: Mapping[str, Any]) -> dict[str, Any]:
        response = self._http.post(
            "/api/metrics/event", json=dict(event), headers=self._post_headers
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def snapshot(self, *, limit: int | None = None, **filters: Any) -> dict[str, Any]:
        """The snapshot; with filters, total/by_event/last_events cover matches only."""
        params = _query(filters)
        if limit is not None:
            params.append(("limit", str(limit)))
        response = self._http.get("/api/metrics/behavior", params=tuple(params))
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def mark(self) -> int:
        """The highest seq so far: pass it as `after=` to see only what comes next."""
        seq: int = self.snapshot(limit=0)["last_seq"]
        return seq

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """Matching events in the ring, oldest first."""
        body = self.snapshot(limit=10_000_000, **filters)
        events: list[dict[str, Any]] = body["last_events"]
        return events[::-1]

    def wait_for(
        self,
        event: str | list[str] | None = None,
        count: int = 1,
        timeout: float = 5,
        *,
        exactly: bool = False,
        settle: float | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Block until `count` matching events are in the ring (oldest first).

        With `exactly=True`, then wait `settle` seconds (at most `timeout`) of quiet and
        fail if any further match arrived. Raises AssertionError listing what matched
        and what else arrived.
        """
        if event is not None:
            filters = {"event": event, **filters}
        params = [("count", str(count)), ("timeout", str(timeout))]
        if exactly:
            params.append(("exactly", "true"))
        if settle is not None:
            params.append(("settle", str(settle)))
        response = self._wait(filters, params, timeout + (settle or 0))
        if response.status_code == 408:
            raise AssertionError(self._explain(filters, count, timeout, response))
        if response.status_code == 409:
            quiet = f" and {settle:g}s of quiet" if settle else ""
            headline = (
                f"expected exactly {count} event(s) matching {_shown(filters)}"
                f" within {timeout:g}s{quiet}, got {response.json()['matched']}:"
            )
            raise AssertionError(
                self._explain(filters, count, timeout, response, headline)
            )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def expect_none(
        self,
        event: str | list[str] | None = None,
        timeout: float = 0.5,
        **filters: Any,
    ) -> None:
        """Pass when no matching event is in the ring or arrives within `timeout`.

        Raises AssertionError listing the offending events and what else arrived.
        """
        if event is not None:
            filters = {"event": event, **filters}
        params = [("absent", "true"), ("timeout", str(timeout))]
        response = self._wait(filters, params, timeout)
        if response.status_code == 409:
            headline = (
                f"expected no event matching {_shown(filters)} within {timeout:g}s,"
                f" got {response.json()['matched']}:"
            )
            raise AssertionError(self._explain(filters, 0, timeout, response, headline))
        response.raise_for_status()

    def expect_sequence(
        self,
        names: Sequence[str],
        per: str | None = None,
        timeout: float = 5,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Block until matching events named `names` arrive in that order (others may
        come between), all from one `per` value (e.g. "visitor_id") when given.

        Returns the events forming the sequence; raises AssertionError listing what
        arrived of those names and what else arrived.
        """
        params = [("sequence", ",".join(names)), ("timeout", str(timeout))]
        if per is not None:
            params.append(("per", per))
        response = self._wait(filters, params, timeout)
        if response.status_code == 408:
            grouped = f" from one {per}" if per else ""
            headline = (
                f"expected the sequence {' -> '.join(names)}{grouped} among events"
                f" matching {_shown(filters)} within {timeout:g}s, got"
                f" {response.json()['matched']} of those names:"
            )
            raise AssertionError(
                self._explain(filters, len(names), timeout, response, headline)
            )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def _wait(
        self, filters: dict[str, Any], params: list[tuple[str, str]], seconds: float
    ) -> httpx.Response:
        return self._http.get(
            "/api/metrics/behavior/wait",
            params=tuple(_query(filters) + params),
            timeout=seconds + self._timeout,
        )

    def _explain(
        self,
        filters: dict[str, Any],
        count: int,
        timeout: float,
        response: httpx.Response,
        headline: str | None = None,
    ) -> str:
        matched: list[dict[str, Any]] = response.json()["events"]
        lines = [
            headline
            or f"expected {count} event(s) matching {_shown(filters)} within"
            f" {timeout:g}s, got {len(matched)}:"
        ]
        lines += [_describe(e) for e in matched] or ["  (none)"]
        # What else arrived in the same window (after the mark, when there is one).
        window = {"after": filters["after"]} if "after" in filters else {}
        recent = self.snapshot(limit=20, **window)
        others = [e for e in recent["last_events"] if e not in matched][::-1]
        where = f"after seq {filters['after']}" if window else "in the ring"
        lines.append(
            f"events {where}: {recent['total']} in all, by name"
            f" {_by_event(recent['by_event'])}; the newest that did not match:"
        )
        lines += [_describe(e) for e in others] or ["  (none)"]
        return "\n".join(lines)

    def reset(self) -> int:
        """Empty the ring (never the file); returns how many events were cleared.

        Global: tests running in parallel should isolate with `mark()` and `after=`.
        """
        response = self._http.delete("/api/metrics/behavior")
        response.raise_for_status()
        cleared: int = response.json()["cleared"]
        return cleared

    def timeseries(self, interval: str = "1m", **filters: Any) -> dict[str, Any]:
        params = [*_query(filters), ("interval", interval)]
        response = self._http.get(
            "/api/metrics/behavior/timeseries", params=tuple(params)
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def _shown(filters: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "no filters"


def _describe(event: Mapping[str, Any]) -> str:
    import orjson

    metadata = orjson.dumps(event.get("metadata", {})).decode()
    return (
        f"  #{event.get('seq')} {event.get('event')}"
        f" visitor={event.get('visitor_id')} at {event.get('timestamp')}"
        f" metadata={metadata}"
    )


def _by_event(counts: list[dict[str, Any]]) -> str:
    return "{" + ", ".join(f"{c['event']}: {c['count']}" for c in counts) + "}"


# The collector as a child process, quiet but for warnings.
