"""Hostile event names and metadata render as text in Chromium.

The dashboard's Content-Security-Policy is the second line of defence; these tests turn it
off (`bypass_csp`) so they prove the first one: event data never becomes markup. Every
payload sets `window.__pwned` (or opens a dialog) if it ever runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from .conftest import Collector

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
    "img, svg, iframe, object, embed, b, [onerror], [onload], [onmouseover], "
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


@pytest.fixture
def csp_off_page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def rows(page: Page) -> Any:
    return page.locator("#events tbody tr.event-row")


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
    dialogs: list[Dialog] = []
    page.on("dialog", lambda d: (dialogs.append(d), d.dismiss()))
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
        row.click()
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


def test_the_dashboard_also_ships_a_strict_csp(collector: Collector) -> None:
    response = httpx.get(collector.url + "/")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
