"""The browser tracker in a real Chromium, loaded by a page on another origin.

The `collector` is the session's, seen through the test's view: every event the
tracker sends here carries the test's id without the page knowing of it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from playwright.sync_api import Page, Request, Route, expect

if TYPE_CHECKING:
    from .conftest import Collector, DemoSite

UUID = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)
EVENTS_PATH = "/api/metrics/events"


def test_a_click_on_another_origin_is_seen_through_the_wait_api(
    page: Page, demo_site: DemoSite, collector: Collector
) -> None:
    assert demo_site.url != collector.url  # a different port: a different origin
    page.goto(f"{demo_site.url}/?visitor=visitor-click")

    page.click("#buy")

    (event,) = collector.wait_for(
        event="checkout_clicked", visitor_id="visitor-click", timeout=10
    )
    assert event["metadata"] == {"plan": "pro"}
    assert UUID.match(event["event_id"])
    assert "Chrome" in event["user_agent"]
    assert event["seq"] >= 1
    (view,) = collector.wait_for(event="page_view", visitor_id="visitor-click")
    assert view["metadata"] == {"path": "/"}
    assert view["event_id"] != event["event_id"]


def test_the_visitor_id_is_kept_in_local_storage(
    page: Page, demo_site: DemoSite, collector: Collector
) -> None:
    page.goto(f"{demo_site.url}/?flush=100")
    stored = page.evaluate("localStorage.getItem('metrics_visitor_id')")
    assert UUID.match(stored)
    page.reload()
    assert page.evaluate("metrics.visitorId()") == stored

    views = collector.wait_for(event="page_view", visitor_id=stored, count=2)
    assert len(views) == 2


def test_navigating_away_delivers_the_queue_by_beacon(
    page: Page, demo_site: DemoSite, collector: Collector
) -> None:
    fetched: list[Request] = []
    page.on("request", lambda r: fetched.append(r) if EVENTS_PATH in r.url else None)
    # Count beacons where the next page (same origin) can read them back.
    page.add_init_script(
        """
        const send = navigator.sendBeacon.bind(navigator);
        navigator.sendBeacon = (url, data) => {
          sessionStorage.setItem("beacons", String(Number(sessionStorage.getItem("beacons")) + 1));
          return send(url, data);
        };
        """
    )
    # A flush interval of ten minutes: only the page leaving can send these.
    page.goto(f"{demo_site.url}/?visitor=visitor-beacon&flush=600000")
    for _ in range(3):
        page.click("#buy")
    assert page.evaluate("metrics.pending()") == 4
    assert fetched == []

    page.click("#next")
    expect(page.locator("h1")).to_have_text("Thanks")

    events = collector.wait_for(visitor_id="visitor-beacon", count=4)
    assert sorted(e["event"] for e in events) == ["checkout_clicked"] * 3 + [
        "page_view"
    ]
    assert len({e["event_id"] for e in events}) == 4
    assert page.evaluate("sessionStorage.getItem('beacons')") == "1"
    assert fetched == []


def test_a_retried_flush_is_not_double_counted(
    page: Page, demo_site: DemoSite, collector: Collector
) -> None:
    answers: list[dict[str, Any]] = []
    bodies: list[Any] = []

    def lose_the_first_response(route: Route) -> None:
        # The collector stores the batch, but the page never hears back: it must retry.
        bodies.append(route.request.post_data_json)
        response = route.fetch()
        answers.append(response.json())
        if len(answers) == 1:
            route.abort("connectionreset")
        else:
            route.fulfill(response=response)

    # The test's id rides in the query (see MetricsClient.tag_context).
    page.route(f"{collector.url}{EVENTS_PATH}?*", lose_the_first_response)
    # No timer flush: the test decides when the tracker sends.
    page.goto(f"{demo_site.url}/?visitor=visitor-retry&flush=600000")
    page.click("#buy")
    with page.expect_event("requestfailed"):
        page.evaluate("metrics.flush()")
    page.wait_for_function("metrics.pending() === 2")
    with page.expect_response(lambda r: EVENTS_PATH in r.url):
        page.evaluate("metrics.flush()")
    page.wait_for_function("metrics.pending() === 0")

    assert len(answers) == 2
    first_ids = [e["event_id"] for e in bodies[0]["events"]]
    assert [e["event_id"] for e in bodies[1]["events"]] == first_ids
    assert answers[0]["stored"] == 2
    assert answers[1]["stored"] == 0
    assert answers[1]["duplicates"] == 2
    snapshot = collector.snapshot(visitor_id="visitor-retry")
    assert snapshot["total"] == 2
    lines = collector.server.jsonl_path.read_text().splitlines()
    assert sum(event_id in line for line in lines for event_id in first_ids) == 2


def test_an_event_the_collector_would_refuse_is_dropped_alone(
    page: Page, demo_site: DemoSite, collector: Collector
) -> None:
    # One bad event would make the collector refuse the whole batch (all or nothing).
    warnings: list[str] = []
    page.on(
        "console", lambda m: warnings.append(m.text) if m.type == "warning" else None
    )
    page.goto(f"{demo_site.url}/?visitor=visitor-bad&flush=600000")

    page.evaluate(
        """() => {
        metrics.track("");
        metrics.track("x".repeat(65));
        metrics.track("bad_metadata", "not an object");
        metrics.track("good", { n: 1 });
        metrics.flush();
        }"""
    )

    events = collector.wait_for(visitor_id="visitor-bad", count=2)
    assert sorted(e["event"] for e in events) == ["good", "page_view"]
    assert len(warnings) == 3, warnings
    assert collector.snapshot(visitor_id="visitor-bad")["total"] == 2


def test_hiding_the_page_sends_the_queue_by_beacon(
    page: Page, demo_site: DemoSite, collector: Collector
) -> None:
    page.goto(f"{demo_site.url}/?visitor=visitor-hidden&flush=600000")
    page.click("#buy")
    assert page.evaluate("metrics.pending()") == 2

    # What a switch to another tab looks like to the page.
    page.evaluate(
        """() => {
        Object.defineProperty(document, "visibilityState", { value: "hidden" });
        document.dispatchEvent(new Event("visibilitychange"));
        }"""
    )

    assert page.evaluate("metrics.pending()") == 0
    events = collector.wait_for(visitor_id="visitor-hidden", count=2)
    assert sorted(e["event"] for e in events) == ["checkout_clicked", "page_view"]


def test_event_ids_without_crypto_random_uuid(
    page: Page, demo_site: DemoSite, collector: Collector
) -> None:
    # randomUUID exists only in secure contexts: a plain-http site on a LAN address lacks it.
    page.add_init_script("delete Crypto.prototype.randomUUID")
    page.goto(f"{demo_site.url}/?flush=100")
    assert page.evaluate("typeof crypto.randomUUID") == "undefined"
    visitor = page.evaluate("metrics.visitorId()")
    assert UUID.match(visitor)

    page.click("#buy")

    events = collector.wait_for(visitor_id=visitor, count=2)
    ids = {e["event_id"] for e in events}
    assert len(ids) == 2
    assert all(UUID.match(i) for i in ids)
