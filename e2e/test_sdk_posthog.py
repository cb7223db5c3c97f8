"""posthog-js in Debian Chromium, pointed at a real collector by its `api_host` alone,
from a demo page on another origin, with its default transport (gzip bodies without
Content-Encoding, sendBeacon at unload).

The SDK comes from the npm registry at a pinned version (e2e/sdks.py); what it sends is
described in e2e/sdk/FINDINGS.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from playwright.sync_api import Page

from . import module_fixtures
from .sdk_wire import (
    Wire,
    burst_arrives_once_each,
    dedupe_count,
    pump_until,
    refuse_after_storing,
)

if TYPE_CHECKING:
    from .conftest import Collector


collector = module_fixtures.unemptied_collector
site = module_fixtures.sdk_site


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
    burst_arrives_once_each(page, collector, visitor, 'posthog.capture("burst", { i })')


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
    page.clock.install()  # so the test need not wait out posthog-js's retry delay
    visitor = open_posthog(page, site)
    pump_until(page, lambda: answers == [200], "the first send")

    with page.expect_response(
        lambda r: r.url.startswith(capture) and "retry_count=1" in r.url
    ) as retried:
        page.clock.fast_forward(10_000)
    assert retried.value.status == 200

    # The collector had the first send before the page heard 503: the retry is a repeat.
    collector.server.client.wait_for(
        "$pageview", visitor_id=visitor, exactly=True, settle=0.3
    )
    assert dedupe_count(collector) - deduplicated >= 1
