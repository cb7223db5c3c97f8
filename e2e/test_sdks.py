"""gtag-format hits from a browser, and README's test recipe: the pytest plugin's
`metrics` fixture with the real SDKs (e2e/sdks.py) on the plugin's own collector."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from playwright.sync_api import Page

from . import sdks

if TYPE_CHECKING:
    from metrics_service.testing import MetricsClient, MetricsServer


@pytest.fixture(scope="module")
def site(metrics_server: MetricsServer) -> Iterator[str]:
    with sdks.demo_site(metrics_server.url) as url:
        yield url


# GA4: gtag-style hits ------------------------------------------------------------------
# gtag.js is not on npm and Google's servers are out of reach here: these hits follow its
# /g/collect format (written by hand), sent the way gtag sends them, by sendBeacon.

GTAG_BASE = (
    "v=2&tid=G-E2ETEST01&gtm=45je5ca0v0&_p=1796300000000&cid={cid}&ul=en-us"
    "&sr=1280x720&_s=1&sid=1796300000&sct=1&seg=0&dl={dl}&dt=Next&_ee=1"
)


def test_ga4_gtag_hits_sent_by_beacon_arrive_once_mapped(
    page: Page, site: str, metrics_server: MetricsServer, metrics: MetricsClient
) -> None:
    page.goto(f"{site}/next.html")
    cid = "1796300000.17963" + page.evaluate("String(Date.now()).slice(-6)")
    base = GTAG_BASE.format(cid=cid, dl=quote(f"{site}/next.html", safe=""))
    url = f"{metrics_server.url}/ga4/g/collect?{base}"

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

    events = metrics.wait_for(visitor_id=cid, count=3, exactly=True, settle=0.3)
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


@pytest.mark.parametrize("sdk", ["segment", "posthog", "rudderstack"])
def test_the_recipe_sees_this_tests_sdk_events_through_the_metrics_fixture(
    page: Page, metrics: MetricsClient, site: str, sdk: str
) -> None:
    page.goto(f"{site}/{sdk}.html?flush=250")  # posthog-js: send every 250 ms
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
