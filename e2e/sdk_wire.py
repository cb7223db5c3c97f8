"""Watching what a real SDK sends from a page (e2e/test_sdk_*.py), and forcing the
collector's answer to fail while it still stores what it received."""

from __future__ import annotations

import gzip
import json
import time
from typing import TYPE_CHECKING, Any

import httpx
from playwright.sync_api import ConsoleMessage, Page, Request, Response, Route

if TYPE_CHECKING:
    from .conftest import Collector

DEDUPED = "metrics_events_deduplicated_total "


class Wire:
    """What the page sends to one collector path and hears back. Fetch and XHR bodies
    only: Playwright cannot read a sendBeacon's body."""

    def __init__(self, page: Page, prefix: str) -> None:
        self.prefix = prefix
        self.messages: list[dict[str, Any]] = []  # the SDK's own events, once per send
        self.sent: list[str] = []  # their ids
        self.gzipped: list[bool] = []  # per request
        self.pages: list[str] = []  # the URL of the page that sent each
        self.responses: list[Response] = []
        self.errors: list[str] = []
        page.on("request", self._request)
        page.on("response", self._response)
        page.on("console", self._console)

    def _request(self, request: Request) -> None:
        if request.method != "POST" or not request.url.startswith(self.prefix):
            return
        body = request.post_data_buffer
        if not body:
            return
        self.gzipped.append(body[:2] == b"\x1f\x8b")
        if self.gzipped[-1]:
            body = gzip.decompress(body)
        message = json.loads(body)
        batch = (
            message.get("batch", [message]) if isinstance(message, dict) else message
        )
        self.messages += batch
        self.sent += [item.get("messageId") or item["uuid"] for item in batch]
        self.pages += [request.frame.url] * len(batch)

    def _response(self, response: Response) -> None:
        if response.request.method == "POST" and response.url.startswith(self.prefix):
            self.responses.append(response)

    @property
    def answers(self) -> list[dict[str, Any]]:
        """The collector's answers (status and body) the page has received, in order;
        read while the page that received them is open."""
        return [{**r.json(), "http": r.status} for r in self.responses]

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


def _collector_headers(response: Any) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower().startswith("access-control-") or name.lower() == "vary"
    }


def refuse_after_storing(
    answers: list[int], status: int = 503, headers: dict[str, str] | None = None
) -> Any:
    """A route handler (for `page.route(..., times=n)`): the request reaches the
    collector, which stores it, but the page hears `status`, so the SDK sends it again."""

    def handle(route: Route) -> None:
        response = route.fetch()
        route.fulfill(
            status=status,
            headers={**_collector_headers(response), **(headers or {})},
            content_type="application/json",
            body='{"detail": "forced by the test"}',
        )
        answers.append(response.status)

    return handle


def store_and_hold(answers: list[int]) -> Any:
    """A route handler (for `page.route(..., times=n)`): the request reaches the
    collector, which stores it, but the page never hears back, as when it navigates
    away while the request is in flight."""

    def handle(route: Route) -> None:
        answers.append(route.fetch().status)

    return handle


def pump_until(page: Page, done: Any, what: str, timeout: float = 10) -> None:
    """Let Playwright run its handlers (routes, events) until `done()` holds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g}s"
        page.wait_for_timeout(20)


def dedupe_count(collector: Collector) -> float:
    """The collector's count of events dropped as repeats of an event id."""
    text = httpx.get(f"{collector.url}/metrics").text
    (line,) = [x for x in text.splitlines() if x.startswith(DEDUPED)]
    return float(line.split()[-1])


def burst_arrives_once_each(
    page: Page, collector: Collector, visitor: str, send: str
) -> None:
    """50 events sent at once by the page (`send` is a JavaScript expression of `i`)
    are stored once each, with their own ids."""
    page.evaluate(f"() => Promise.all(Array.from({{ length: 50 }}, (_, i) => {send}))")
    events = collector.server.client.wait_for(
        "burst", visitor_id=visitor, count=50, exactly=True, settle=0.3, timeout=10
    )
    assert sorted(e["metadata"]["i"] for e in events) == list(range(50))
    assert len({e["event_id"] for e in events}) == 50
