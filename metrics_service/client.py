"""MetricsClient: the collector's HTTP API as assertions for tests (metrics_service.testing
re-exports it). Only the standard library at import time: httpx and orjson are imported
when a client is first used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx
    from playwright.sync_api import BrowserContext

HEALTH_PATH = "/api/metrics/behavior/health"
REJECTED_PATH = "/api/metrics/behavior/rejected"
# The collector's carriers of a request's test id (metrics_service/ingest/test_tag.py,
# which imports the app: tests/test_client.py checks these are its names).
TEST_ID_HEADER = "X-Metrics-Test-Id"
TEST_ID_QUERY = "test_id"
TEST_ID_COOKIE = "metrics_test_id"
TAG_SCRIPT = Path(__file__).parent / "static" / "test_tag.js"
REFUSALS_SHOWN = 5  # in a failed wait's message


def _query(filters: Mapping[str, Any]) -> list[tuple[str, str]]:
    # The app's own encoding of filters (lists repeat, meta.a.b=1); imported on first
    # use because it brings the app's modules with it.
    from metrics_service.read.query import flat_params

    return flat_params(dict(filters))


class MetricsClient:
    """A client for the collector's HTTP API, made for assertions in tests.

    Filters are keyword arguments: `event="signup"` (or a list: any of),
    `visitor_id`, `event_id`, `test_id`, `since`/`until` (ISO string or datetime),
    `after` (a seq from `mark()`), `meta={"plan": "pro"}` for `meta.plan=pro`, and
    operators as suffixes (`visitor_id__prefix="visitor-"`).

    `token` is sent as `Authorization: Bearer <token>` on every request (the
    collector's METRICS_READ_TOKEN); `ingest_token`, when given, replaces it on
    `post()` (METRICS_INGEST_TOKEN, when the two differ).

    A client bound to a `test_id` (see `view()`) reads only the events and refusals
    carrying that id, and `post()` stamps it on what it sends.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        ingest_token: str | None = None,
        test_id: str | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.test_id = test_id
        self._timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._post_headers = (
            {"Authorization": f"Bearer {ingest_token}"} if ingest_token else {}
        )
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=headers
        )
        self._owner = True

    def view(self, test_id: str) -> MetricsClient:
        """A client bound to `test_id`, sharing this one's connections (so it costs no
        new connection pool, and closing it closes nothing)."""
        bound = object.__new__(MetricsClient)
        bound.__dict__.update(self.__dict__)
        bound.test_id = test_id
        bound._owner = False
        return bound

    def close(self) -> None:
        """Close the connections (a view leaves its parent's open)."""
        if self._owner:
            self._http.close()

    @property
    def closed(self) -> bool:
        """Whether the connections are closed (a closed client cannot send)."""
        return self._http.is_closed

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _filters(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        # A view's own test id, unless the caller names one (test_id=None: any).
        if self.test_id is None or "test_id" in filters:
            return {k: v for k, v in filters.items() if v is not None}
        return {**filters, "test_id": self.test_id}

    def health(self) -> dict[str, Any]:
        """The collector's health answer (ring and sink), whatever its status."""
        response = self._http.get(HEALTH_PATH)
        body: dict[str, Any] = response.json()
        return body

    def post(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """POST one event; returns the 202's body, raises httpx.HTTPStatusError else.

        A view sends its test id in the X-Metrics-Test-Id header.
        """
        headers = dict(self._post_headers)
        if self.test_id is not None:
            headers[TEST_ID_HEADER] = self.test_id
        response = self._http.post(
            "/api/metrics/event", json=dict(event), headers=headers
        )
        return _body(response)

    def snapshot(self, *, limit: int | None = None, **filters: Any) -> dict[str, Any]:
        """The snapshot; with filters, total/by_event/last_events cover matches only."""
        params = _query(self._filters(filters))
        if limit is not None:
            params.append(("limit", str(limit)))
        response = self._http.get("/api/metrics/behavior", params=tuple(params))
        return _body(response)

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
        __tracebackhide__ = True  # pytest shows the message, not this method
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
        events: list[dict[str, Any]] = _body(response)["events"]
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
        __tracebackhide__ = True  # pytest shows the message, not this method
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
        __tracebackhide__ = True  # pytest shows the message, not this method
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
        events: list[dict[str, Any]] = _body(response)["events"]
        return events

    def _wait(
        self, filters: dict[str, Any], params: list[tuple[str, str]], seconds: float
    ) -> httpx.Response:
        return self._http.get(
            "/api/metrics/behavior/wait",
            params=tuple(_query(self._filters(filters)) + params),
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
        if self.test_id is not None:
            where += f" from test {self.test_id!r}"
        lines.append(
            f"events {where}: {recent['total']} in all, by name"
            f" {_by_event(recent['by_event'])}; the newest that did not match:"
        )
        lines += [_describe(e) for e in others] or ["  (none)"]
        return "\n".join(lines + self._refused_lines())

    def _refused_lines(self) -> list[str]:
        # A refused request never becomes an event, so a failed wait says so; a view's
        # only, as the quarantine cannot tell an unbound client's old refusals from new.
        import httpx

        try:
            refused = self.rejections(limit=REFUSALS_SHOWN) if self.test_id else None
        except httpx.HTTPError:
            refused = None
        if not refused:
            return []
        head = (
            f"requests carrying test id {self.test_id!r} that the collector refused"
            f" ({len(refused)}, newest first, at most {REFUSALS_SHOWN}):"
        )
        return [head] + [line for r in refused for line in describe_refusal(r)]

    def reset(self) -> int:
        """Empty the ring (never the file); returns how many events were cleared.

        Global, even from a view: isolate with a view or `after=mark()` instead.
        """
        response = self._http.delete("/api/metrics/behavior")
        cleared: int = _body(response)["cleared"]
        return cleared

    def timeseries(self, interval: str = "1m", **filters: Any) -> dict[str, Any]:
        """Counts per `interval` bucket (1s 10s 1m 5m 15m 1h 1d) of matching events."""
        params = [*_query(self._filters(filters)), ("interval", interval)]
        response = self._http.get(
            "/api/metrics/behavior/timeseries", params=tuple(params)
        )
        return _body(response)

    def rejections(self, **filters: Any) -> list[dict[str, Any]] | None:
        """Refused ingest requests in the quarantine, newest first (a view's: those
        carrying its test id); None from a collector without a quarantine (404).

        Filters: `status`, `event`, `visitor_id`, `test_id`, `after` (a record id).
        """
        params = _query(self._filters(filters))
        response = self._http.get(REJECTED_PATH, params=tuple(params))
        if response.status_code == 404:
            return None
        records: list[dict[str, Any]] = _body(response)["rejections"]
        return records

    def tag_context(self, context: BrowserContext) -> None:
        """Make a Playwright context's pages tag what they send to this collector with
        this view's test id, without a change to the pages' code.

        Requests by fetch, XMLHttpRequest and sendBeacon get `?test_id=` (a script run
        in each page before its own); every other request to the collector's host
        (an image pixel, a navigation) carries the `metrics_test_id` cookie.
        """
        import json
        from urllib.parse import quote, urlsplit

        if self.test_id is None:
            raise ValueError("tag_context() needs a view: client.view(test_id)")
        parts = urlsplit(self.base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        args = (json.dumps(origin), json.dumps(TEST_ID_QUERY), json.dumps(self.test_id))
        script = f"{TAG_SCRIPT.read_text()}({', '.join(args)});"
        context.add_init_script(script=script)
        for page in context.pages:  # opened before: tag the document they show now
            page.evaluate(script)
        cookie = quote(self.test_id, safe="")
        context.add_cookies([{"name": TEST_ID_COOKIE, "value": cookie, "url": origin}])

    def tracker_tag(self, **options: Any) -> str:
        """The HTML that loads tracker.js from this collector and calls metrics.init.

        `options` add to init's (visitorId, flushInterval, token); a view adds its
        testId, so pages opened outside Playwright are tagged too.
        """
        import json
        from html import escape as html_escape

        init: dict[str, Any] = {"endpoint": self.base_url}
        if self.test_id is not None:
            init["testId"] = self.test_id
        init.update(options)
        # "</" would end the script element early; "<\/" means the same in JSON.
        config = json.dumps(init).replace("</", "<\\/")
        source = html_escape(f"{self.base_url}/tracker.js")
        return (
            f'<script src="{source}"></script>\n'
            f"<script>metrics.init({config});</script>"
        )


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


def describe_refusal(record: Mapping[str, Any]) -> list[str]:
    """A quarantine record as failure messages show it: a line, and its body's."""
    import json

    lines = [
        f"  #{record.get('id')} {record.get('status')} {record.get('path')}"
        f" event={record.get('event')} visitor={record.get('visitor_id')}:"
        f" {json.dumps(record.get('detail'))}"
    ]
    body = record.get("body")
    if body:
        lines.append(f"    body: {body if isinstance(body, str) else json.dumps(body)}")
    return lines


def _body(response: httpx.Response) -> dict[str, Any]:
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def _by_event(counts: list[dict[str, Any]]) -> str:
    return "{" + ", ".join(f"{c['event']}: {c['count']}" for c in counts) + "}"
