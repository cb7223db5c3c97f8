"""The live dashboard in a real Chromium against a real collector process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import Dialog, Page, Route, expect

from metrics_service.testing import MetricsServer

from .conftest import Collector

XSS = "<img src=x onerror=alert(1)>"


def event(name: str, visitor: str = "visitor-dash", **metadata: Any) -> dict[str, Any]:
    return {"visitor_id": visitor, "event": name, "metadata": metadata}


def bar(page: Page, name: str) -> Any:
    return page.locator("#bars .bar").filter(has=page.locator(".name", has_text=name))


def rows(page: Page) -> Any:
    return page.locator("#events tbody tr.event-row")


def open_live(page: Page, collector: Collector) -> None:
    page.goto(collector.url + "/")
    expect(page.locator("#connection-text")).to_have_text("live")
    # Survives only as long as the page is not reloaded.
    page.evaluate("window.notReloaded = true")


def test_bars_and_rows_follow_the_stream_without_a_reload(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    open_live(page, collector)
    expect(page.locator("#rows-empty")).to_be_visible()
    expect(page.locator("#sink-path")).to_have_text(str(collector.server.jsonl_path))

    collector.post(
        [event("signup", plan="pro"), event("signup"), event("page_view", path="/")]
    )

    expect(bar(page, "signup").locator(".count")).to_have_text("2")
    expect(bar(page, "page_view").locator(".count")).to_have_text("1")
    expect(rows(page)).to_have_count(3)
    expect(page.locator("#ring-size")).to_have_text("3")
    expect(page.locator("#last-seq")).to_have_text("3")
    # Newest first.
    expect(rows(page).locator("td.seq")).to_have_text(["3", "2", "1"])
    expect(rows(page).first.locator("td.event")).to_have_text("page_view")

    collector.post([event("signup", visitor="visitor-other")])

    expect(bar(page, "signup").locator(".count")).to_have_text("3")
    expect(rows(page)).to_have_count(4)
    expect(rows(page).first.locator("td.visitor")).to_have_text("visitor-other")
    size = collector.server.jsonl_path.stat().st_size
    assert size > 0
    expect(page.locator("#sink-size")).not_to_have_text("0 B")

    # A row opens its full JSON.
    rows(page).nth(3).click()
    detail = page.locator("#events tr.detail pre")
    expect(detail).to_contain_text('"event": "signup"')
    expect(detail).to_contain_text('"plan": "pro"')
    expect(detail).to_contain_text('"seq": 1')
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

    page.click("#pause")
    expect(page.locator("#connection-text")).to_have_text("paused")
    collector.post([event("while_paused")])
    page.click("#pause")
    expect(page.locator("#connection-text")).to_have_text("live")
    expect(rows(page).first.locator("td.event")).to_have_text("while_paused")
    expect(rows(page)).to_have_count(6)
    collector.post([event("after_resume")])
    expect(rows(page).first.locator("td.event")).to_have_text("after_resume")
    page.screenshot(path=artifacts / "dashboard-filters.png", full_page=True)
    assert page.evaluate("window.notReloaded") is True


def test_reset_empties_the_dashboard_but_not_the_file(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    open_live(page, collector)
    collector.post([event("signup"), event("page_view")])
    expect(rows(page)).to_have_count(2)

    page.click("#reset")

    expect(rows(page)).to_have_count(0)
    expect(page.locator("#bars .bar")).to_have_count(0)
    expect(page.locator("#ring-size")).to_have_text("0")
    expect(page.locator("#bars-empty")).to_be_visible()
    assert collector.snapshot()["total"] == 0
    assert len(collector.server.jsonl_path.read_text().splitlines()) == 2
    # Still live after the reset.
    collector.post([event("after_reset")])
    expect(rows(page)).to_have_count(1)
    expect(bar(page, "after_reset").locator(".count")).to_have_text("1")
    page.screenshot(path=artifacts / "dashboard-reset.png", full_page=True)


def test_event_text_is_shown_as_text_and_runs_nothing(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    dialogs: list[Dialog] = []
    page.on("dialog", lambda d: (dialogs.append(d), d.dismiss()))
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
    row.click()
    expect(page.locator("#events tr.detail pre")).to_contain_text(
        "<script>alert(2)</script>"
    )
    page.fill("#filter-text", "onerror")
    expect(rows(page)).to_have_count(1)
    page.screenshot(path=artifacts / "dashboard-xss.png", full_page=True)

    assert page.locator("img").count() == 0
    assert page.locator("script").count() == 1  # the dashboard's own
    assert page.locator("b").count() == 0
    assert dialogs == []


def test_the_stream_resumes_after_the_collector_restarts(
    page: Page, collector: Collector, artifacts: Path
) -> None:
    server = collector.server
    open_live(page, collector)
    collector.post([event("signup"), event("page_view")])
    expect(rows(page)).to_have_count(2)

    server.stop()
    expect(page.locator("#connection")).not_to_have_attribute("data-state", "live")
    # Same port, same file: the ring is replayed from the JSONL and seqs continue.
    with MetricsServer(server.jsonl_path, port=server.port):
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


def test_a_read_token_is_asked_for_and_then_used(
    page: Page, tmp_path: Path, artifacts: Path
) -> None:
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
        snapshot = collector.snapshot()
        assert snapshot["evicted"] == 2
        expect(page.locator("#sink-size")).to_have_text(
            f"{server.jsonl_path.stat().st_size} B"
        )
        page.screenshot(path=artifacts / "dashboard-evicted.png", full_page=True)


def test_a_reset_from_the_server_reconnects_from_the_last_seen_seq(
    page: Page, collector: Collector
) -> None:
    collector.post([event("signup"), event("signup")])
    streams: list[str] = []

    def first_stream_falls_behind(route: Route) -> None:
        streams.append(route.request.url)
        if len(streams) == 1:
            # What the server sends a client whose queue overflowed.
            route.fulfill(
                status=200,
                headers={"Content-Type": "text/event-stream"},
                body='event: reset\ndata: {"reason":"fell behind","last_seq":2}\n\n',
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
    assert all("after=2" in url for url in streams)
