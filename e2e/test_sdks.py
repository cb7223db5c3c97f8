"""The real analytics SDKs in Debian Chromium, pointed at a real collector by their host
setting alone, from a demo page on another origin, each with its default transport.

The SDKs come from the npm registry at pinned versions (e2e/sdks.py); what they send is
described in e2e/sdk/FINDINGS.md. Every test isolates itself by the visitor id the SDK
made up in a fresh browser context, so the module shares one collector.
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, Response, Route

from . import sdks

if TYPE_CHECKING:
    from metrics_service.testing import MetricsClient, MetricsServer

    from .conftest import Collector

DEDUPED = "metrics_events_deduplicated_total "


@pytest.fixture
def collector(shared_collector: Collector) -> Collector:
    return shared_collector


@pytest.fixture(scope="module")
def site(shared_collector: Collector) -> Iterator[str]:
    with sdks.demo_site(shared_collector.url) as url:
        yield url


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


# Segment's analytics-next --------------------------------------------------------------


def open_segment(page: Page, site: str, query: str = "") -> str:
    page.goto(f"{site}/segment.html{query}")
    page.evaluate("window.ready")
    anonymous_id: str = page.evaluate(
        "async () => (await analytics.user()).anonymousId()"
    )
    return anonymous_id


def test_segment_page_track_and_identify_arrive_once_mapped(
    page: Page, site: str, collector: Collector
) -> None:
    wire = Wire(page, f"{collector.url}/segment/")
    visitor = open_segment(page, site)

    ids = page.evaluate(
        """async () => {
        const calls = [
          await analytics.page("Home", { section: "shop" }),
          await analytics.track("Order Completed", { plan: "pro", revenue: 42 }),
          await analytics.identify("user-segment-1", { email: "a@example.com" }),
        ];
        return calls.map((ctx) => ctx.event.messageId);
        }"""
    )

    events = collector.server.client.wait_for(
        visitor_id=visitor, count=3, exactly=True, settle=0.3
    )
    assert [e["event"] for e in events] == ["page", "Order Completed", "identify"]
    assert [e["event_id"] for e in events] == ids
    view, order, identify = events
    assert view["metadata"]["section"] == "shop"
    assert view["metadata"]["$sdk"] == {
        "format": "segment",
        "type": "page",
        "name": "Home",
        "url": f"{site}/segment.html",
        "path": "/segment.html",
        "title": "Segment demo",
        "referrer": "",
        "library": "analytics.js",
        "library_version": "next-1.84.3",
    }
    assert {k: order["metadata"][k] for k in ("plan", "revenue")} == {
        "plan": "pro",
        "revenue": 42,
    }
    assert order["metadata"]["$sdk"]["type"] == "track"
    assert "user_id" not in order["metadata"]["$sdk"]  # null before identify
    assert identify["metadata"]["email"] == "a@example.com"
    assert identify["metadata"]["$sdk"]["type"] == "identify"
    assert identify["metadata"]["$sdk"]["user_id"] == "user-segment-1"
    assert all("HeadlessChrome" in e["user_agent"] for e in events)
    assert [a["http"] for a in wire.answers] == [200, 200, 200]
    assert wire.errors == []


def test_segment_a_burst_of_50_arrives_once_each(
    page: Page, site: str, collector: Collector
) -> None:
    visitor = open_segment(page, site)

    page.evaluate(
        """() => Promise.all(
          Array.from({ length: 50 }, (_, i) => analytics.track("burst", { i }))
        )"""
    )

    events = collector.server.client.wait_for(
        "burst", visitor_id=visitor, count=50, exactly=True, settle=0.3
    )
    assert sorted(e["metadata"]["i"] for e in events) == list(range(50))
    assert len({e["event_id"] for e in events}) == 50


def test_segment_an_event_sent_as_the_page_unloads_arrives_once(
    page: Page, site: str, collector: Collector
) -> None:
    visitor = open_segment(page, site)
    # A link to another page of the same site: analytics-next sends from there what
    # it kept when this page went.
    page.evaluate(
        """async () => {
        await analytics.page();
        const link = document.getElementById("next");
        link.href = "/segment.html?again";
        link.addEventListener("click", () => {
          analytics.track("left by link", { via: "click" });
        });
        }"""
    )

    page.click("#next")
    page.wait_for_url("**/segment.html?again")

    (event,) = collector.server.client.wait_for(
        "left by link", visitor_id=visitor, exactly=True, settle=0.3
    )
    assert event["metadata"]["via"] == "click"


def test_segment_events_kept_at_unload_are_resent_by_the_next_page_and_stored_once(
    page: Page, site: str, collector: Collector
) -> None:
    wire = Wire(page, f"{collector.url}/segment/")
    answers: list[int] = []
    deduplicated = dedupe_count(collector)
    # The collector stores each of the five, but the page leaves before it hears back:
    # analytics-next keeps events in flight in localStorage for the next page.
    page.route(f"{collector.url}/segment/v1/t", store_and_hold(answers), times=5)
    visitor = open_segment(page, site)
    page.evaluate(
        "() => { for (let i = 0; i < 5; i++) analytics.track('kept', { i }); }"
    )
    pump_until(page, lambda: len(answers) == 5, "the five stored")

    page.goto(f"{site}/segment.html?again")
    pump_until(page, lambda: len(wire.sent) == 10, "the five sent again")

    events = collector.server.client.wait_for(
        "kept", visitor_id=visitor, count=5, exactly=True, settle=0.3
    )
    assert sorted(e["metadata"]["i"] for e in events) == list(range(5))
    assert Counter(wire.sent) == {e["event_id"]: 2 for e in events}
    assert sum(url.endswith("?again") for url in wire.pages) == 5
    assert dedupe_count(collector) - deduplicated == 5


def test_segment_batching_flushes_with_keepalive_on_pagehide(
    page: Page, site: str, collector: Collector
) -> None:
    wire = Wire(page, f"{collector.url}/segment/")
    # Batches of 100 and no timer: only the page going away sends these five.
    visitor = open_segment(page, site, "?batch=100")
    page.evaluate(
        """() => Promise.all(
          Array.from({ length: 5 }, (_, i) => analytics.track("batched", { i }))
        )"""
    )
    assert wire.sent == []

    page.click("#next")
    page.wait_for_url("**/next.html")

    events = collector.server.client.wait_for(
        "batched", visitor_id=visitor, count=5, exactly=True, settle=0.3
    )
    assert sorted(e["metadata"]["i"] for e in events) == list(range(5))


def test_segment_batching_a_burst_of_50_cut_by_unload_arrives_once_each(
    page: Page, site: str, collector: Collector
) -> None:
    visitor = open_segment(page, site, "?batch=10")

    # Five batches go out as the page leaves; pagehide sends the unacknowledged again.
    page.evaluate(
        """async () => {
        await Promise.all(
          Array.from({ length: 50 }, (_, i) => analytics.track("burst", { i }))
        );
        location.href = "/next.html";
        }"""
    )
    page.wait_for_url("**/next.html")

    events = collector.server.client.wait_for(
        "burst", visitor_id=visitor, count=50, exactly=True, settle=0.5
    )
    assert sorted(e["metadata"]["i"] for e in events) == list(range(50))


def test_segment_retry_after_a_503_is_stored_once(
    page: Page, site: str, collector: Collector
) -> None:
    answers: list[int] = []
    page.route(f"{collector.url}/segment/v1/t", refuse_after_storing(answers), times=1)
    visitor = open_segment(page, site)

    with page.expect_response(
        lambda r: r.url.endswith("/segment/v1/t") and r.status == 200
    ):
        page.evaluate("analytics.track('retried', { n: 1 })")

    assert answers == [200]  # the collector had it before the page heard 503
    (event,) = collector.server.client.wait_for(
        "retried", visitor_id=visitor, exactly=True, settle=0.3
    )
    assert event["metadata"]["n"] == 1


# posthog-js ----------------------------------------------------------------------------


def open_posthog(page: Page, site: str, query: str = "?flush=250") -> str:
    """The demo page with posthog-js ready; its queue sends every 250 ms unless
    `query` says otherwise, rather than every 3 s."""
    page.goto(f"{site}/posthog.html{query}")
    page.evaluate("window.ready")
    distinct_id: str = page.evaluate("posthog.get_distinct_id()")
    return distinct_id


def test_posthog_pageview_capture_and_identify_arrive_once_mapped(
    page: Page, site: str, collector: Collector
) -> None:
    wire = Wire(page, f"{collector.url}/posthog/e/")
    visitor = open_posthog(page, site)
    user = f"user-posthog-{visitor[-8:]}"

    uuid = page.evaluate(
        "posthog.capture('order completed', { plan: 'pro', revenue: 42 }).uuid"
    )
    page.evaluate(
        "(user) => posthog.identify(user, { email: 'a@example.com' }, { tier: 'gold' })",
        user,
    )

    client = collector.server.client
    (view,) = client.wait_for("$pageview", visitor_id=visitor, exactly=True, settle=0.3)
    (order,) = client.wait_for("order completed", visitor_id=visitor, exactly=True)
    (identify,) = client.wait_for("$identify", visitor_id=user, exactly=True)
    assert order["event_id"] == uuid
    assert {k: order["metadata"][k] for k in ("plan", "revenue")} == {
        "plan": "pro",
        "revenue": 42,
    }
    assert "token" not in order["metadata"]
    assert order["metadata"]["$sdk"] == {
        "format": "posthog",
        "type": "capture",
        "url": f"{site}/posthog.html?flush=250",
        "path": "/posthog.html",
        "referrer": "$direct",
        "library": "web",
        "library_version": "1.449.2",
    }
    assert view["metadata"]["$sdk"]["type"] == "page"
    assert view["metadata"]["$sdk"]["title"] == "PostHog demo"
    assert identify["metadata"]["$set"] == {"email": "a@example.com"}
    assert identify["metadata"]["$set_once"]["tier"] == "gold"
    assert identify["metadata"]["$sdk"]["type"] == "identify"
    assert all("HeadlessChrome" in e["user_agent"] for e in (view, order, identify))
    pump_until(
        page, lambda: {uuid, identify["event_id"]} <= set(wire.sent), "the sends"
    )
    assert all(wire.gzipped)  # gzip with no Content-Encoding
    assert {a["http"] for a in wire.answers} == {200}
    assert wire.errors == []


def test_posthog_a_burst_of_50_arrives_once_each(
    page: Page, site: str, collector: Collector
) -> None:
    visitor = open_posthog(page, site)

    page.evaluate(
        "() => { for (let i = 0; i < 50; i++) posthog.capture('burst', { i }); }"
    )

    events = collector.server.client.wait_for(
        "burst", visitor_id=visitor, count=50, exactly=True, settle=0.3, timeout=10
    )
    assert sorted(e["metadata"]["i"] for e in events) == list(range(50))
    assert len({e["event_id"] for e in events}) == 50


def test_posthog_an_event_sent_as_the_page_unloads_arrives_once_by_beacon(
    page: Page, site: str, collector: Collector
) -> None:
    wire = Wire(page, f"{collector.url}/posthog/e/")
    visitor = open_posthog(page, site, "")  # the default interval: only unload sends
    # Let the start-up events go first, so the queue holds only what the page leaves.
    collector.server.client.wait_for("$pageview", visitor_id=visitor)

    uuid = page.evaluate("posthog.capture('leaving', { why: 'unload' }).uuid")
    page.click("#next")
    page.wait_for_url("**/next.html")

    client = collector.server.client
    (event,) = client.wait_for("leaving", visitor_id=visitor, exactly=True, settle=0.3)
    assert event["event_id"] == uuid
    assert event["metadata"]["why"] == "unload"
    client.wait_for("$pageleave", visitor_id=visitor, exactly=True)
    assert (
        uuid not in wire.sent
    )  # it went by sendBeacon, whose body Playwright cannot see


def test_posthog_retry_after_a_503_is_stored_once(
    page: Page, site: str, collector: Collector
) -> None:
    answers: list[int] = []
    deduplicated = dedupe_count(collector)
    capture = f"{collector.url}/posthog/e/"
    page.route(
        lambda url: url.startswith(capture), refuse_after_storing(answers), times=1
    )

    with page.expect_response(
        lambda r: r.url.startswith(capture) and "retry_count=1" in r.url,
        timeout=15_000,
    ) as retried:
        visitor = open_posthog(page, site)
    assert retried.value.status == 200

    assert answers == [
        200
    ]  # the collector had the first send before the page heard 503
    collector.server.client.wait_for(
        "$pageview", visitor_id=visitor, exactly=True, settle=0.3
    )
    assert dedupe_count(collector) - deduplicated >= 1


# RudderStack's JavaScript SDK (Segment's API) -------------------------------------------


def open_rudderstack(page: Page, site: str, query: str = "") -> str:
    page.goto(f"{site}/rudderstack.html{query}")
    page.evaluate("window.ready")
    anonymous_id: str = page.evaluate("rudder.getAnonymousId()")
    return anonymous_id


def test_rudderstack_page_track_and_identify_arrive_once_mapped(
    page: Page, site: str, collector: Collector
) -> None:
    wire = Wire(page, f"{collector.url}/segment/")
    visitor = open_rudderstack(page, site)

    page.evaluate(
        """() => {
        rudder.page("Home", { section: "shop" });
        rudder.track("Order Completed", { plan: "pro", revenue: 42 });
        rudder.identify("user-rudderstack-1", { email: "a@example.com" });
        }"""
    )

    events = collector.server.client.wait_for(
        visitor_id=visitor, count=3, exactly=True, settle=0.3
    )
    by_name = {e["event"]: e for e in events}
    assert sorted(by_name) == ["Order Completed", "identify", "page"]
    pump_until(page, lambda: len(wire.messages) == 3, "the page's events")
    sent = {m.get("event", m["type"]): m["messageId"] for m in wire.messages}
    assert {name: e["event_id"] for name, e in by_name.items()} == sent
    view, order, identify = (
        by_name[n] for n in ("page", "Order Completed", "identify")
    )
    assert view["metadata"]["section"] == "shop"
    assert {k: view["metadata"]["$sdk"][k] for k in ("type", "name", "title")} == {
        "type": "page",
        "name": "Home",
        "title": "RudderStack demo",
    }
    assert {k: order["metadata"][k] for k in ("plan", "revenue")} == {
        "plan": "pro",
        "revenue": 42,
    }
    assert {k: order["metadata"]["$sdk"][k] for k in sdk_keys} == {
        "format": "segment",
        "type": "track",
        "url": f"{site}/rudderstack.html",
        "library": "RudderLabs JavaScript SDK",
        "library_version": "3.34.1",
    }
    assert identify["metadata"]["email"] == "a@example.com"  # sent in context.traits
    assert identify["metadata"]["$sdk"]["user_id"] == "user-rudderstack-1"
    assert all("HeadlessChrome" in e["user_agent"] for e in events)
    assert wire.errors == []


sdk_keys = ("format", "type", "url", "library", "library_version")


def test_rudderstack_a_burst_of_50_arrives_once_each(
    page: Page, site: str, collector: Collector
) -> None:
    visitor = open_rudderstack(page, site)

    page.evaluate(
        "() => { for (let i = 0; i < 50; i++) rudder.track('burst', { i }); }"
    )

    events = collector.server.client.wait_for(
        "burst", visitor_id=visitor, count=50, exactly=True, settle=0.3, timeout=10
    )
    assert sorted(e["metadata"]["i"] for e in events) == list(range(50))
    assert len({e["event_id"] for e in events}) == 50


def test_rudderstack_an_event_sent_as_the_page_unloads_arrives_once(
    page: Page, site: str, collector: Collector
) -> None:
    visitor = open_rudderstack(page, site)
    # A link to another page of the site: RudderStack keeps its queue in localStorage.
    page.evaluate(
        """() => {
        const link = document.getElementById("next");
        link.href = "/rudderstack.html?again";
        link.addEventListener("click", () => {
          rudder.track("left by link", { via: "click" });
        });
        }"""
    )

    page.click("#next")
    page.wait_for_url("**/rudderstack.html?again")

    (event,) = collector.server.client.wait_for(
        "left by link", visitor_id=visitor, exactly=True, settle=0.3, timeout=10
    )
    assert event["metadata"]["via"] == "click"


def test_rudderstack_retry_after_a_503_is_stored_once(
    page: Page, site: str, collector: Collector
) -> None:
    wire = Wire(page, f"{collector.url}/segment/")
    answers: list[int] = []
    deduplicated = dedupe_count(collector)
    page.route(
        f"{collector.url}/segment/v1/track", refuse_after_storing(answers), times=1
    )
    visitor = open_rudderstack(page, site)

    page.evaluate("rudder.track('retried', { n: 1 })")
    pump_until(page, lambda: len(wire.sent) == 2, "the retry", timeout=15)

    assert answers == [200]  # the collector had it before the page heard 503
    assert len(set(wire.sent)) == 1
    (event,) = collector.server.client.wait_for(
        "retried", visitor_id=visitor, exactly=True, settle=0.3
    )
    assert event["metadata"]["n"] == 1
    assert dedupe_count(collector) - deduplicated == 1


# GA4: gtag-style hits ------------------------------------------------------------------
# gtag.js is not on npm and Google's servers are out of reach here: these hits follow its
# /g/collect format (written by hand), sent the way gtag sends them, by sendBeacon.

GTAG_BASE = (
    "v=2&tid=G-E2ETEST01&gtm=45je5ca0v0&_p=1796300000000&cid={cid}&ul=en-us"
    "&sr=1280x720&_s=1&sid=1796300000&sct=1&seg=0&dl={dl}&dt=Next&_ee=1"
)


def test_ga4_gtag_hits_sent_by_beacon_arrive_once_mapped(
    page: Page, site: str, collector: Collector
) -> None:
    page.goto(f"{site}/next.html")
    cid = "1796300000.17963" + page.evaluate("String(Date.now()).slice(-6)")
    base = GTAG_BASE.format(cid=cid, dl=quote(f"{site}/next.html", safe=""))
    url = f"{collector.url}/ga4/g/collect?{base}"

    sent = page.evaluate(
        """([url]) => [
          navigator.sendBeacon(url + "&en=page_view&_fv=1&_ss=1", ""),
          navigator.sendBeacon(url, [
            "en=scroll&epn.percent_scrolled=90&_et=5012",
            "en=purchase&ep.currency=EUR&epn.value=42.5&_et=120",
          ].join("\\n")),
        ]""",
        [url],
    )
    assert sent == [True, True]

    events = collector.server.client.wait_for(
        visitor_id=cid, count=3, exactly=True, settle=0.3
    )
    by_name = {e["event"]: e for e in events}
    assert sorted(by_name) == ["page_view", "purchase", "scroll"]
    assert by_name["page_view"]["metadata"]["$sdk"] == {
        "format": "ga4",
        "type": "gtag",
        "measurement_id": "G-E2ETEST01",
        "url": f"{site}/next.html",
        "title": "Next",
        "session_id": "1796300000",
    }
    assert by_name["scroll"]["metadata"]["percent_scrolled"] == 90
    purchase = by_name["purchase"]["metadata"]
    assert {k: purchase[k] for k in ("currency", "value")} == {
        "currency": "EUR",
        "value": 42.5,
    }
    assert all("HeadlessChrome" in e["user_agent"] for e in events)


# README's test recipe: the plugin's `metrics` fixture ------------------------------------


@pytest.fixture(scope="module")
def plugin_site(metrics_server: MetricsServer) -> Iterator[str]:
    with sdks.demo_site(metrics_server.url) as url:
        yield url


@pytest.mark.parametrize("sdk", ["segment", "posthog", "rudderstack"])
def test_the_recipe_sees_this_tests_sdk_events_through_the_metrics_fixture(
    page: Page, metrics: MetricsClient, plugin_site: str, sdk: str
) -> None:
    page.goto(f"{plugin_site}/{sdk}.html")
    page.evaluate("window.ready")
    call = {
        "segment": "analytics.track('Order Completed', { plan: 'pro' })",
        "posthog": "posthog.capture('Order Completed', { plan: 'pro' })",
        "rudderstack": "rudder.track('Order Completed', { plan: 'pro' })",
    }[sdk]
    page.evaluate(call)

    (event,) = metrics.wait_for("Order Completed", meta={"plan": "pro"}, timeout=10)
    assert event["metadata"]["$sdk"]["format"] == {"rudderstack": "segment"}.get(
        sdk, sdk
    )
