"""The live dashboard in a real Chromium against a real collector process.

One collector for the module (emptied before each test); the tests that restart a
collector or need other settings start their own.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Error, Page, Route, expect

from metrics_service.testing import MetricsServer

from . import module_fixtures
from .conftest import Collector, own_page, record_dialogs, rows

XSS = "<img src=x onerror=alert(1)>"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 860}


collector = module_fixtures.emptied_collector


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    yield from own_page(browser, viewport=PHONE)


def event(name: str, visitor: str = "visitor-dash", **metadata: Any) -> dict[str, Any]:
    return {"visitor_id": visitor, "event": name, "metadata": metadata}


def at(when: dt.datetime, name: str, visitor: str, **metadata: Any) -> dict[str, Any]:
    stamp = when.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    return {
        **event(name, visitor, **metadata),
        "timestamp": stamp.replace("+00:00", "Z"),
    }


def last_seq(collector: Collector) -> int:
    seq: int = collector.snapshot()["last_seq"]
    return seq


def refuse(collector: Collector, body: str | bytes, **headers: str) -> httpx.Response:
    response = httpx.post(
        collector.url + "/api/metrics/events",
        content=body,
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status_code in (400, 413, 415, 422), response.text
    return response


def bar(page: Page, name: str) -> Any:
    return page.locator("#bars .bar").filter(has=page.locator(".name", has_text=name))


def open_live(page: Page, collector: Collector) -> None:
    page.goto(collector.url + "/")
    expect(page.locator("#connection-text")).to_have_text("live")
    # Survives only as long as the page is not reloaded.
    page.evaluate("window.notReloaded = true")


def test_bars_and_rows_follow_the_stream_without_a_reload(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    base = last_seq(collector)
    open_live(page, collector)
    expect(page.locator("#rows-empty")).to_have_text("No events yet.")
    expect(page.locator("#sink-path")).to_have_text(str(collector.server.jsonl_path))

    collector.post(
        [event("signup", plan="pro"), event("signup"), event("page_view", path="/")]
    )

    expect(bar(page, "signup").locator(".count")).to_have_text("2")
    expect(bar(page, "page_view").locator(".count")).to_have_text("1")
    expect(rows(page)).to_have_count(3)
    expect(page.locator("#ring-size")).to_have_text("3")
    expect(page.locator("#last-seq")).to_have_text(str(base + 3))
    # Newest first.
    expect(rows(page).locator("td.seq")).to_have_text(
        [str(base + 3), str(base + 2), str(base + 1)]
    )
    expect(rows(page).first.locator("td.event")).to_have_text("page_view")

    collector.post([event("signup", visitor="visitor-other")])

    expect(bar(page, "signup").locator(".count")).to_have_text("3")
    expect(rows(page)).to_have_count(4)
    expect(rows(page).first.locator("td.visitor")).to_have_text("visitor-other")
    expect(page.locator("#sink-size")).not_to_have_text("0 B")

    # A row opens its full JSON.
    rows(page).nth(3).locator("td.seq").click()
    detail = page.locator("#events tr.detail pre")
    expect(detail).to_contain_text('"event": "signup"')
    expect(detail).to_contain_text('"plan": "pro"')
    expect(detail).to_contain_text(f'"seq": {base + 1}')
    # And from the keyboard.
    rows(page).first.press("Enter")
    expect(detail).to_have_count(2)
    expect(detail.first).to_contain_text('"visitor_id": "visitor-other"')
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=artifacts / "dashboard-live.png", full_page=True)


def test_filters_pause_and_resume(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    collector.post(
        [
            event("signup", visitor="visitor-alice", plan="pro"),
            event("page_view", visitor="visitor-alice", path="/pricing"),
            event("page_view", visitor="visitor-bob", path="/docs"),
        ]
    )
    open_live(page, collector)
    expect(rows(page)).to_have_count(3)

    page.fill("#filter-visitor", "visitor-bob")
    expect(rows(page)).to_have_count(1)
    expect(bar(page, "page_view").locator(".count")).to_have_text("1")
    expect(bar(page, "signup")).to_have_count(0)
    # Live events are filtered too.
    collector.post(
        [event("search", visitor="visitor-bob"), event("search", visitor="visitor-x1")]
    )
    expect(bar(page, "search").locator(".count")).to_have_text("1")
    expect(rows(page)).to_have_count(2)

    page.click("#clear-filters")
    expect(rows(page)).to_have_count(5)
    page.fill("#filter-text", "PRICING")
    expect(rows(page)).to_have_count(1)
    expect(rows(page).locator("td.meta")).to_have_text('{"path":"/pricing"}')
    page.fill("#filter-text", "")

    bar(page, "signup").click()
    expect(page.locator("#filter-event")).to_have_value("signup")
    expect(rows(page)).to_have_count(1)
    page.click("#clear-filters")
    expect(rows(page)).to_have_count(5)

    # Pause freezes the view and counts what arrives meanwhile.
    page.click("#pause")
    expect(page.locator("#connection-text")).to_have_text("paused")
    collector.post([event("while_paused"), event("while_paused")])
    expect(page.locator("#pause")).to_have_text("Resume (2 new)")
    expect(rows(page)).to_have_count(5)
    page.click("#pause")
    expect(page.locator("#pause")).to_have_text("Pause")
    expect(page.locator("#connection-text")).to_have_text("live")
    expect(rows(page).first.locator("td.event")).to_have_text("while_paused")
    expect(rows(page)).to_have_count(7)
    collector.post([event("after_resume")])
    expect(rows(page).first.locator("td.event")).to_have_text("after_resume")
    page.screenshot(path=artifacts / "dashboard-filters.png", full_page=True)
    assert page.evaluate("window.notReloaded") is True


def test_operator_filters_have_the_servers_semantics(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    collector.post(
        [
            event("checkout", visitor="visitor-op-1", amount=12, plan="pro"),
            event("checkout", visitor="visitor-op-2", amount="9.5", plan="team"),
            event("checkout", visitor="other-op-3", amount="twelve"),
            event("page_view", visitor="visitor-op-1", path="/docs/intro"),
        ]
    )
    open_live(page, collector)
    expect(rows(page)).to_have_count(4)

    def server_seqs(**params: str) -> list[str]:
        response = httpx.get(collector.url + "/api/metrics/behavior", params=params)
        assert response.status_code == 200, response.text
        return [str(e["seq"]) for e in response.json()["last_events"]]

    cases = [
        ("meta.amount__gte=10", {"meta.amount__gte": "10"}, 1),
        ("meta.amount__lt=10", {"meta.amount__lt": "10"}, 1),
        ("meta.plan__ne=pro", {"meta.plan__ne": "pro"}, 3),
        ("meta.plan__in=pro,team", {"meta.plan__in": "pro,team"}, 2),
        ("meta.path__prefix=/docs", {"meta.path__prefix": "/docs"}, 1),
        ("meta.plan__exists=false", {"meta.plan__exists": "false"}, 2),
        (
            "visitor_id__prefix=visitor- event=checkout",
            {"visitor_id__prefix": "visitor-", "event": "checkout"},
            2,
        ),
        (
            "event__in=page_view,nothing & meta.path__contains=intro",
            {"event__in": "page_view,nothing", "meta.path__contains": "intro"},
            1,
        ),
    ]
    for text, params, count in cases:
        page.fill("#filter-where", text)
        expected = server_seqs(**params)
        assert len(expected) == count, (text, expected)
        expect(rows(page).locator("td.seq"), text).to_have_text(expected)

    # Live events are judged by the server too.
    page.fill("#filter-where", "meta.amount__gte=10")
    expect(rows(page)).to_have_count(1)
    collector.post([event("checkout", amount=50), event("checkout", amount=5)])
    expect(rows(page)).to_have_count(2)
    expect(rows(page).first.locator("td.meta")).to_have_text('{"amount":50}')
    expect(bar(page, "checkout").locator(".count")).to_have_text("2")

    # Nothing matching says so, with the ring's size.
    page.fill("#filter-where", "meta.amount__gt=1000")
    expect(page.locator("#rows-empty")).to_have_text(
        "6 events in the ring, none match."
    )
    expect(page.locator("#bars-empty")).to_have_text(
        "6 events in the ring, none match."
    )

    # A bad operator shows the server's 422 detail.
    page.fill("#filter-where", "meta.amount__between=1")
    expect(page.locator("#error")).to_contain_text("unknown operator '__between'")
    expect(page.locator("#error")).to_contain_text("meta.amount__between")
    expect(rows(page)).to_have_count(0)
    page.fill("#filter-where", "limit=3")
    expect(page.locator("#error")).to_contain_text('"limit" is set by the dashboard')
    page.screenshot(path=artifacts / "dashboard-operators.png", full_page=True)
    page.click("#clear-filters")
    expect(page.locator("#error")).to_be_hidden()
    expect(rows(page)).to_have_count(6)


def test_reset_asks_first_and_empties_the_ring_but_not_the_file(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    lines_before = len(collector.server.jsonl_path.read_text().splitlines())
    open_live(page, collector)
    collector.post([event("signup"), event("page_view")])
    expect(rows(page)).to_have_count(2)

    asked: list[str] = []
    answers = [False, True]  # first Cancel, then OK

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if answers.pop(0):
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", answer)
    with page.expect_event("dialog"):
        page.click("#reset")
    assert len(asked) == 1
    assert "2 events" in asked[0] and "JSONL file is kept" in asked[0], asked
    expect(rows(page)).to_have_count(2)
    assert collector.snapshot()["total"] == 2

    with page.expect_event("dialog"):
        page.click("#reset")

    expect(rows(page)).to_have_count(0)
    expect(page.locator("#bars .bar")).to_have_count(0)
    expect(page.locator("#ring-size")).to_have_text("0")
    expect(page.locator("#rows-empty")).to_have_text("No events yet.")
    assert collector.snapshot()["total"] == 0
    lines = collector.server.jsonl_path.read_text().splitlines()
    assert len(lines) == lines_before + 2
    # Still live after the reset.
    collector.post([event("after_reset")])
    expect(rows(page)).to_have_count(1)
    expect(bar(page, "after_reset").locator(".count")).to_have_text("1")
    page.screenshot(path=artifacts / "dashboard-reset.png", full_page=True)


def test_event_text_is_shown_as_text_and_runs_nothing(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    dialogs = record_dialogs(page)
    open_live(page, collector)

    collector.post(
        [
            {
                "visitor_id": "<b>visitor</b>",
                "event": XSS,
                "metadata": {"html": "<script>alert(2)</script>", XSS: XSS},
            }
        ]
    )

    row = rows(page).first
    expect(row.locator("td.event")).to_have_text(XSS)
    expect(row.locator("td.visitor")).to_have_text("<b>visitor</b>")
    expect(bar(page, XSS).locator(".count")).to_have_text("1")
    row.locator("td.seq").click()
    expect(page.locator("#events tr.detail pre")).to_contain_text(
        "<script>alert(2)</script>"
    )
    row.locator("td.visitor .link").click()
    expect(page.locator("#trail-visitor")).to_have_text("<b>visitor</b>")
    expect(page.locator("#trail-list .ev")).to_have_text([XSS])
    expect(page.locator("#timeline-legend .key-name")).to_have_text([XSS])
    page.fill("#filter-text", "onerror")
    expect(rows(page)).to_have_count(1)
    page.screenshot(path=artifacts / "dashboard-xss.png", full_page=True)

    assert page.locator("img").count() == 0
    own = page.locator("script[src^='/static/']").count()
    assert page.locator("script").count() == own == 8  # the dashboard's own files
    assert page.locator("b").count() == 0
    assert dialogs == []


def test_the_time_shows_the_date_when_it_is_not_today(
    page: Page, collector: Collector
) -> None:
    earlier = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    collector.post([at(earlier, "old_visit", "visitor-old"), event("new_visit")])
    open_live(page, collector)
    expect(rows(page)).to_have_count(2)
    today = rows(page).filter(has_text="new_visit").locator("td.time")
    expect(today).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    old = rows(page).filter(has_text="old_visit").locator("td.time")
    # Local time, in the browser's zone, which is this process's.
    expect(old).to_have_text(earlier.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])
    expect(page.locator("#events")).to_have_class(re.compile(r"\bdated\b"))


def test_the_timeline_counts_live_events_by_name(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    open_live(page, collector)
    collector.post([event("signup"), event("page_view"), event("page_view")])
    # A string expression: it needs evaluation in the page, which the policy allows.
    page.wait_for_function(
        "document.querySelector('#timeline-chart svg').dataset.total === '3'"
    )
    chart = page.locator("#timeline-chart svg")
    counts: dict[str, int] = {}
    for rect in chart.locator("rect").all():
        name = rect.get_attribute("data-event")
        assert name is not None
        counts[name] = counts.get(name, 0) + int(rect.get_attribute("data-count") or 0)
    assert counts == {"page_view": 2, "signup": 1}
    expect(page.locator("#timeline-legend .key-name")).to_have_text(
        ["page_view", "signup"]
    )

    # Filtered, it counts what the filter keeps; per minute, the same events.
    page.fill("#filter-event", "signup")
    page.wait_for_function(
        "document.querySelector('#timeline-chart svg').dataset.total === '1'"
    )
    page.select_option("#timeline-interval", "1m")
    page.wait_for_function(
        "() => { const svg = document.querySelector('#timeline-chart svg');"
        " return svg.dataset.interval === '1m' && svg.dataset.total === '1'; }"
    )
    page.click("#clear-filters")
    collector.post([event("search")])
    page.wait_for_function(
        "document.querySelector('#timeline-chart svg').dataset.total === '4'"
    )
    expect(page.locator("#timeline-total")).to_have_text("4 in the window")
    # Past five names, the quietest stack as "other".
    collector.post(
        [event("page_view"), event("e_one"), event("e_two"), event("e_three")]
    )
    page.wait_for_function(
        "document.querySelector('#timeline-chart svg').dataset.total === '8'"
    )
    expect(page.locator("#timeline-legend .key-name")).to_have_count(6)
    expect(page.locator("#timeline-legend .key-name").first).to_have_text("page_view")
    expect(page.locator("#timeline-legend .key-name").last).to_have_text("other")
    page.screenshot(path=artifacts / "dashboard-timeline.png", full_page=True)


def test_a_visitor_trail_lists_its_events_in_order_with_the_gaps(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3)
    collector.post(
        [
            at(start, "page_view", "visitor-trail", path="/"),
            at(start, "page_view", "visitor-elsewhere", path="/"),
            at(start + dt.timedelta(seconds=1.5), "signup_start", "visitor-trail"),
            at(start + dt.timedelta(seconds=66.5), "signup_done", "visitor-trail"),
        ]
    )
    open_live(page, collector)
    rows(page).filter(has_text="signup_done").locator("td.visitor .link").click()

    trail = page.locator("#trail")
    expect(trail).to_be_visible()
    expect(page.locator("#trail-visitor")).to_have_text("visitor-trail")
    steps = page.locator("#trail-list .step")
    expect(steps.locator(".ev")).to_have_text(
        ["page_view", "signup_start", "signup_done"]
    )
    expect(steps.locator(".gap")).to_have_text(["start", "+1.5 s", "+1 min 5 s"])
    expect(page.locator("#trail-note")).to_have_text("3 events, over 1 min 6 s")
    # The row did not open: the visitor link has its own click.
    expect(page.locator("#events tr.detail")).to_have_count(0)

    # New events of that visitor are appended; others' are not.
    collector.post([event("purchase", visitor="visitor-trail"), event("x_other")])
    expect(steps.locator(".ev")).to_have_text(
        ["page_view", "signup_start", "signup_done", "purchase"]
    )
    expect(steps.last.locator(".gap")).to_have_text(re.compile(r"^\+\d+ min \d+ s$"))
    page.screenshot(path=artifacts / "dashboard-trail.png", full_page=True)
    page.click("#trail-close")
    expect(trail).to_be_hidden()


def test_each_event_shows_the_sdk_it_came_through(
    page: Page, collector: Collector
) -> None:
    collector.post(
        [
            event("$pageview", **{"$sdk": {"format": "posthog", "type": "capture"}}),
            event("page", **{"$sdk": {"format": "segment"}}),
            event("page_view", **{"$sdk": {"format": "ga4"}}),
            event("own_api"),
            event("spoofed", **{"$sdk": {"format": XSS}}),
        ]
    )
    open_live(page, collector)
    expect(rows(page)).to_have_count(5)
    badges = rows(page).locator("td.event .fmt")
    expect(badges).to_have_text([XSS, "ga4", "segment", "posthog"])
    expect(rows(page).filter(has_text="own_api").locator(".fmt")).to_have_count(0)
    expect(rows(page).filter(has_text="posthog").locator(".fmt")).to_have_class(
        re.compile(r"\bfmt-posthog\b")
    )
    # An unknown format is shown as its text, with no colour of its own.
    expect(rows(page).first.locator(".fmt")).to_have_class("fmt")
    assert page.locator("img").count() == 0

    # Through the real Segment endpoint: the badge, and a refusal in the Rejected panel.
    track = {
        "type": "track",
        "event": "Signed Up",
        "anonymousId": "anon-segment-1",
        "messageId": "segment-message-0001",
        "properties": {"plan": "pro"},
    }
    sent = httpx.post(
        collector.url + "/segment/v1/t",
        content=json.dumps(track),
        headers={"Content-Type": "text/plain"},
    )
    assert sent.status_code == 200, sent.text
    expect(rows(page).first.locator("td.event")).to_have_text("segmentSigned Up")
    expect(rows(page).first.locator(".fmt")).to_have_class(
        re.compile(r"\bfmt-segment\b")
    )
    refused = httpx.post(
        collector.url + "/segment/v1/t",
        content=json.dumps(
            {**track, "anonymousId": None, "messageId": "segment-message-0002"}
        ),
        headers={"Content-Type": "text/plain"},
    )
    assert 400 <= refused.status_code < 500, refused.text
    expect(page.locator("#rejected-list .rejection .path").first).to_have_text(
        "/segment/v1/t"
    )


def test_the_rejected_panel_shows_refusals_the_moment_they_happen(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    open_live(page, collector)
    badge = page.locator("#rejected-badge")
    expect(badge).to_have_text("0")
    expect(page.locator("#rejected-empty")).to_have_text("Nothing refused.")

    refused = '{"events": [{"visitor_id": "v1", "event": "checkout_completed"}]}'
    refuse(collector, refused)
    expect(badge).to_have_text("1")
    expect(badge).to_have_class(re.compile(r"\bbad\b"))
    item = page.locator("#rejected-list .rejection").first
    expect(item.locator(".status")).to_have_text("422")
    expect(item.locator(".path")).to_have_text("/api/metrics/events")
    expect(item.locator(".summary")).to_have_text(
        "#0 visitor_id: String should have at least 6 characters"
    )

    refuse(collector, b"{not json")
    expect(badge).to_have_text("2")
    expect(page.locator("#rejected-list .rejection .status")).to_have_text(
        ["400", "422"]
    )

    # A click shows the detail and the body as sent.
    page.locator("#rejected-list .rejection").nth(1).locator(".rejection-head").click()
    opened = page.locator("#rejected-list .rejection.open")
    expect(opened.locator("pre.body")).to_have_text(refused)
    expect(opened.locator("pre.detail")).to_contain_text("visitor_id")
    expect(opened.locator("dd").first).to_have_text("v1")
    page.screenshot(path=artifacts / "dashboard-rejected.png", full_page=True)

    # Seen after a reload too; its Clear empties the list alone, Reset both.
    page.reload()
    expect(badge).to_have_text("2")
    collector.post([event("kept")])
    expect(rows(page)).to_have_count(1)
    page.once("dialog", lambda d: d.accept())
    page.click("#rejected-clear")
    expect(badge).to_have_text("0")
    expect(page.locator("#rejected-list .rejection")).to_have_count(0)
    expect(page.locator("#rejected-clear")).to_be_hidden()
    assert collector.snapshot()["total"] == 1
    refuse(collector, b"{not json")
    expect(badge).to_have_text("1")
    page.once("dialog", lambda d: d.accept())
    page.click("#reset")
    expect(badge).to_have_text("0")
    expect(rows(page)).to_have_count(0)


def test_wait_for_function_works_and_html_sinks_are_refused(
    page: Page, collector: Collector
) -> None:
    page.goto(collector.url + "/")
    # Polled (false at first), so Playwright evaluates the string in the page.
    page.wait_for_function(
        "document.querySelector('#connection-text').textContent === 'live'"
    )
    collector.post([event("polled")])
    page.wait_for_function(
        "document.querySelectorAll('#events tr.event-row').length === 1"
    )
    page.wait_for_function("n => window.metricsDashboard.state.all.total === n", arg=1)
    # Trusted Types: a string can never become markup in this page.
    for sink in (
        "document.body.innerHTML = '<b>x</b>'",
        "document.body.insertAdjacentHTML('beforeend', '<b>x</b>')",
        "document.write('<b>x</b>')",
    ):
        with pytest.raises(Error, match="TrustedHTML"):
            page.evaluate(sink)
    assert page.locator("b").count() == 0


def test_the_page_requests_nothing_but_the_collector(
    page: Page, collector: Collector
) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    collector.post([event("signup", visitor="visitor-req")])
    refuse(collector, b"{not json")
    open_live(page, collector)
    expect(rows(page)).to_have_count(1)
    page.locator("#rejected-list .rejection-head").first.click()
    rows(page).first.locator("td.visitor .link").click()
    expect(page.locator("#trail-list .step")).to_have_count(1)
    page.wait_for_function(
        "document.querySelector('#timeline-chart svg').dataset.total === '1'"
    )
    assert requested
    outside = [url for url in requested if not url.startswith(collector.url + "/")]
    assert outside == []
    assert any("/behavior/timeseries" in url for url in requested)


def test_usable_at_390_px(phone: Page, collector: Collector, artifacts: Path) -> None:
    page = phone
    collector.post(
        [
            event(
                "checkout_completed_with_a_long_name",
                visitor="visitor-with-a-long-id-0123456789",
                amount=12,
                plan="pro",
                note="x" * 80,
            ),
            event("page_view", path="/pricing"),
        ]
    )
    refuse(collector, '[{"visitor_id": "v1", "event": "page_view"}]')
    open_live(page, collector)
    expect(rows(page)).to_have_count(2)
    page.locator("#rejected-list .rejection-head").first.click()
    # Nothing is wider than the screen: the page never scrolls sideways...
    widths = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1] == PHONE["width"], widths
    # ... every control is on screen ...
    for selector in (
        "#pause",
        "#reset",
        "#rejected-badge",
        "#filter-where",
        "#clear-filters",
        "#timeline-interval",
    ):
        box = page.locator(selector).bounding_box()
        assert (
            box is not None
            and box["x"] >= 0
            and box["x"] + box["width"] <= PHONE["width"]
        ), selector
    # ... and the table scrolls inside its panel.
    scroll = page.evaluate(
        "(() => { const s = document.querySelector('.table-scroll');"
        " return [s.scrollWidth, s.clientWidth]; })()"
    )
    assert scroll[0] > scroll[1], scroll
    page.locator(".table-scroll").evaluate("s => { s.scrollLeft = s.scrollWidth; }")
    meta = rows(page).first.locator("td.meta").bounding_box()
    assert meta is not None and meta["x"] + meta["width"] <= PHONE["width"], meta
    page.screenshot(path=artifacts / "dashboard-390.png", full_page=True)


def test_screenshot_of_every_panel(
    page: Page, phone: Page, collector: Collector, artifacts: Path
) -> None:
    """The README's picture (e2e/dashboard.png is a copy of artifacts/dashboard.png)."""
    now = dt.datetime.now(dt.UTC)
    # A visitor's funnel, with other traffic around it, over the last half minute.
    funnel = ["page_view", "search", "signup_start", "signup_done"]
    posted = [
        at(now - dt.timedelta(seconds=28 - 6 * i), name, "visitor-2", step=i)
        for i, name in enumerate(funnel)
    ]
    for second in range(0, 30, 2):
        for k in range(1 + second % 3):
            name = ("page_view", "search", "page_view", "link_click")[(second + k) % 4]
            when = now - dt.timedelta(seconds=30 - second, milliseconds=-100 * k)
            posted.append(at(when, name, f"visitor-{(second + k) % 5 + 3}", path="/"))
    posted.append(event("$pageview", "visitor-ph", **{"$sdk": {"format": "posthog"}}))
    collector.post(posted)
    total = len(posted)
    refuse(
        collector,
        '{"events": [{"visitor_id": "v-1", "event": "checkout_completed"}]}',
    )
    for shot, view in (
        (artifacts / "dashboard.png", page),
        (artifacts / "dashboard-390-panels.png", phone),
    ):
        view.set_viewport_size(DESKTOP if view is page else PHONE)
        open_live(view, collector)
        expect(rows(view)).to_have_count(total)
        expect(view.locator("#rejected-badge")).to_have_text("1")
        rows(view).filter(has_text="signup_done").locator("td.visitor .link").click()
        expect(view.locator("#trail-list .step")).to_have_count(len(funnel))
        view.locator("#rejected-list .rejection-head").first.click()
        view.wait_for_function(
            "n => document.querySelector('#timeline-chart svg').dataset.total === n",
            arg=str(total),
        )
        view.evaluate("window.scrollTo(0, 0)")
        view.screenshot(path=shot, full_page=view is phone)
    assert (artifacts / "dashboard.png").stat().st_size > 0


def test_the_stream_resumes_after_the_collector_restarts(
    page: Page, tmp_path: Path
) -> None:
    # Its own collector: a restart replays the file into the ring.
    with MetricsServer(tmp_path / "m.jsonl") as server:
        collector = Collector(server)
        open_live(page, collector)
        collector.post([event("signup"), event("page_view")])
        expect(rows(page)).to_have_count(2)

        server.stop()
        expect(page.locator("#connection")).not_to_have_attribute("data-state", "live")
        # Same port, same file: the ring is replayed from the JSONL and seqs continue.
        server.start()
        collector.post([event("signup", visitor="visitor-after")])
        expect(page.locator("#connection-text")).to_have_text("live", timeout=15_000)
        expect(rows(page)).to_have_count(3)
        expect(rows(page).locator("td.seq")).to_have_text(["3", "2", "1"])
        expect(bar(page, "signup").locator(".count")).to_have_text("2")
        expect(page.locator("#ring-size")).to_have_text("3")
        collector.post([event("live_again")])
        expect(rows(page).first.locator("td.event")).to_have_text("live_again")
        expect(rows(page)).to_have_count(4)
        assert page.evaluate("window.notReloaded") is True


def test_a_read_token_is_asked_for_and_then_used(page: Page, tmp_path: Path) -> None:
    token = "read-token-for-the-dashboard"
    with MetricsServer(
        tmp_path / "m.jsonl", env={"METRICS_READ_TOKEN": token}
    ) as server:
        page.goto(server.url + "/")
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("token")

        page.fill("#token", token)
        page.click("#token-form button")

        expect(page.locator("#token-form")).to_be_hidden()
        expect(page.locator("#connection-text")).to_have_text("live")
        Collector(server).post([event("signup")])
        expect(rows(page)).to_have_count(1)
        expect(bar(page, "signup").locator(".count")).to_have_text("1")
        assert page.evaluate("sessionStorage.getItem('metrics_read_token')") == token


def test_ring_fill_and_evictions_follow_the_server(
    page: Page, tmp_path: Path, artifacts: Path
) -> None:
    with MetricsServer(
        tmp_path / "m.jsonl", env={"METRICS_RING_CAPACITY": "3"}
    ) as server:
        collector = Collector(server)
        open_live(page, collector)
        collector.post([event("signup"), event("signup"), event("page_view")])
        expect(page.locator("#ring-size")).to_have_text("3")
        expect(page.locator("#ring-capacity")).to_have_text("3")

        collector.post([event("search"), event("search")])

        expect(page.locator("#evicted")).to_have_text("2")
        expect(page.locator("#ring-size")).to_have_text("3")
        # The evicted signups leave the bars once the dashboard recounts.
        expect(bar(page, "signup")).to_have_count(0)
        expect(bar(page, "search").locator(".count")).to_have_text("2")
        expect(bar(page, "page_view").locator(".count")).to_have_text("1")
        assert collector.snapshot()["evicted"] == 2
        expect(page.locator("#sink-size")).to_have_text(
            f"{server.jsonl_path.stat().st_size} B"
        )
        page.screenshot(path=artifacts / "dashboard-evicted.png", full_page=True)


def test_a_reset_from_the_server_reconnects_from_the_last_seen_seq(
    page: Page, collector: Collector
) -> None:
    collector.post([event("signup"), event("signup")])
    base = last_seq(collector)
    streams: list[str] = []

    def first_stream_falls_behind(route: Route) -> None:
        streams.append(route.request.url)
        if len(streams) == 1:
            # What the server sends a client whose queue overflowed.
            route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream"},
                body=f'event: reset\ndata: {{"reason":"fell behind","last_seq":{base}}}\n\n',
            )
        else:
            route.continue_()

    page.route("**/api/metrics/behavior/stream?*", first_stream_falls_behind)
    open_live(page, collector)
    expect(rows(page)).to_have_count(2)

    collector.post([event("page_view")])

    expect(rows(page)).to_have_count(3)
    expect(bar(page, "signup").locator(".count")).to_have_text("2")
    assert len(streams) == 2
    assert all(f"after={base}" in url for url in streams)
