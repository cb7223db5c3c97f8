"""Hostile event names and metadata render as text in Chromium.

The dashboard's Content-Security-Policy (script-src 'self' and Trusted Types) is the second
line of defence; these tests turn it off (`bypass_csp`) so they prove the first one: event
data, and the refused requests in the Rejected panel, never become markup. Every
payload sets `window.__pwned` (or opens a dialog) if it ever runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from . import module_fixtures
from .conftest import Collector, own_page, record_dialogs, rows

PAYLOADS = [
    '<img src=x onerror="window.__pwned=1">',
    "<svg onload=window.__pwned=1>",
    "<script>window.__pwned=1</script>",
    '"><img src=x onerror=alert(1)>',
    "' onmouseover='window.__pwned=1' x='",
    "<iframe srcdoc='<script>parent.__pwned=1</script>'>",
    "javascript:window.__pwned=1",
    "{{constructor.constructor('window.__pwned=1')()}}",
    "${window.__pwned=1}",
    "&lt;b&gt;entity&lt;/b&gt;",
    "<b>bold</b><!--",
]
MARKUP = (
    # The timeline's chart is the page's own SVG; any other is injected.
    "img, svg:not(#timeline-chart > svg), iframe, object, embed, b, [onerror], [onload], "
    "[onmouseover], "
    "a[href^='javascript'], script:not([src])"
)


def hostile(name: str, i: int) -> dict[str, Any]:
    return {
        "visitor_id": f"<i>v{i}</i><img src=x onerror=window.__pwned=1>"[:64],
        "event": name,
        "user_agent": "<script>window.__pwned=1</script>",
        "metadata": {
            name: name,
            "html": "</pre><img src=x onerror=alert(1)>",
            # Refused in event names (422) but kept as data in metadata.
            "bidi": "\u202egnp.exe",
            "n": i,
        },
    }


collector = module_fixtures.emptied_collector


@pytest.fixture
def csp_off_page(browser: Browser) -> Iterator[Page]:
    yield from own_page(browser, bypass_csp=True)


def assert_inert(page: Page, dialogs: list[Dialog]) -> None:
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    injected = page.locator(MARKUP)
    assert injected.count() == 0, injected.evaluate_all(
        "els => els.map(e => e.outerHTML)"
    )


def test_hostile_names_and_metadata_render_as_text(
    csp_off_page: Page, collector: Collector, artifacts: Path
) -> None:
    page = csp_off_page
    dialogs = record_dialogs(page)
    half = len(PAYLOADS) // 2
    # The first half arrives in the initial snapshot, the rest through the live stream.
    collector.post([hostile(name, i) for i, name in enumerate(PAYLOADS[:half])])
    page.goto(collector.url + "/")
    expect(page.locator("#connection-text")).to_have_text("live")
    collector.post(
        [hostile(name, i) for i, name in enumerate(PAYLOADS[half:], start=half)]
    )

    expect(rows(page)).to_have_count(len(PAYLOADS))
    shown = rows(page).locator("td.event")
    expect(shown).to_have_text(list(reversed(PAYLOADS)))
    for name in PAYLOADS:
        bar = page.locator("#bars .bar .name").filter(has_text=name)
        expect(bar.first).to_have_text(name)

    for i in range(len(PAYLOADS)):
        row = rows(page).nth(i)
        row.hover()
        row.locator("td.seq").click()
    details = page.locator("#events tr.detail pre")
    expect(details.first).to_contain_text("</pre><img src=x onerror=alert(1)>")

    page.fill("#filter-text", "<img src=x onerror=window.__pwned=1>")
    page.fill("#filter-visitor", "<svg onload=window.__pwned=1>")
    page.fill("#filter-event", PAYLOADS[0])
    page.fill("#filter-event", "")
    page.fill("#filter-visitor", "")
    page.fill("#filter-text", "")
    expect(rows(page)).to_have_count(len(PAYLOADS))
    page.screenshot(path=artifacts / "xss-hostile.png", full_page=True)
    assert_inert(page, dialogs)


def test_hostile_refusals_render_as_text(
    csp_off_page: Page, collector: Collector, artifacts: Path
) -> None:
    """Everything in a rejected record is the sender's: body, detail, names, headers."""
    page = csp_off_page
    dialogs = record_dialogs(page)
    page.goto(collector.url + "/")
    expect(page.locator("#connection-text")).to_have_text("live")
    bodies: list[tuple[str, dict[str, str]]] = [
        # Refused for its short visitor id; the event name and metadata are kept.
        (
            json.dumps(
                {
                    "events": [
                        {**hostile(name, i), "visitor_id": "<b>"}
                        for i, name in enumerate(PAYLOADS)
                    ]
                }
            ),
            {"Content-Type": "application/json"},
        ),
        # Not JSON at all: the body is markup.
        (
            "</pre><img src=x onerror=window.__pwned=1><script>window.__pwned=1</script>",
            {"Content-Type": "application/json"},
        ),
        # A refused content type, with a hostile User-Agent.
        (
            "<svg onload=window.__pwned=1>",
            {"Content-Type": "text/html", "User-Agent": PAYLOADS[0]},
        ),
    ]
    for body, headers in bodies:
        response = httpx.post(
            collector.url + "/api/metrics/events", content=body, headers=headers
        )
        assert response.status_code in (400, 415, 422), response.text
    expect(page.locator("#rejected-badge")).to_have_text(str(len(bodies)))
    heads = page.locator("#rejected-list .rejection-head")
    expect(heads).to_have_count(len(bodies))
    for i in range(len(bodies)):
        heads.nth(i).click()
    expect(page.locator("#rejected-list pre.body")).to_have_count(len(bodies))
    expect(page.locator("#rejected-list pre.body").nth(1)).to_contain_text(
        "</pre><img src=x onerror=window.__pwned=1>"
    )
    expect(page.locator("#rejected-list").first).to_contain_text(PAYLOADS[0])
    page.screenshot(path=artifacts / "xss-rejected.png", full_page=True)
    assert_inert(page, dialogs)


def test_hostile_visitors_and_formats_in_the_trail_and_badges(
    csp_off_page: Page, collector: Collector, artifacts: Path
) -> None:
    page = csp_off_page
    dialogs = record_dialogs(page)
    visitor = "<img src=x onerror=window.__pwned=1>"
    collector.post(
        [
            {
                **hostile(name, i),
                "visitor_id": visitor,
                "metadata": {"$sdk": {"format": name}},
            }
            for i, name in enumerate(PAYLOADS)
        ]
    )
    page.goto(collector.url + "/")
    expect(rows(page)).to_have_count(len(PAYLOADS))
    expect(rows(page).locator("td.event .fmt")).to_have_text(list(reversed(PAYLOADS)))
    rows(page).first.locator("td.visitor .link").click()
    expect(page.locator("#trail-visitor")).to_have_text(visitor)
    expect(page.locator("#trail-list .ev")).to_have_text(PAYLOADS)
    page.wait_for_function(
        f"document.querySelector('#timeline-chart svg').dataset.total === '{len(PAYLOADS)}'"
    )
    expect(page.locator("#timeline-legend .key-name").first).to_have_text(
        re.compile(".+")
    )
    page.screenshot(path=artifacts / "xss-trail.png", full_page=True)
    assert_inert(page, dialogs)


def test_the_dashboard_also_ships_a_strict_csp(collector: Collector) -> None:
    response = httpx.get(collector.url + "/")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self' 'trusted-types-eval';" in csp
    assert "require-trusted-types-for 'script'; trusted-types 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
