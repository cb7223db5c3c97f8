"""Browser fixtures: Debian's Chromium driven by Playwright, and a demo site on another origin.

The collector itself comes from the plugin (metrics_service.testing): `metrics_server`,
one per pytest process, and `metrics`, the running test's view of it, which also tags
pytest-playwright's `context` and `page` with the test's id. The page helpers here
(own_page, record_dialogs, rows) serve the dashboard and XSS tests alike.
"""

from __future__ import annotations

import http.server
import os
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Locator, Page

from metrics_service.client import TEST_ID_HEADER
from metrics_service.testing import MetricsClient, MetricsServer

CHROMIUM = os.environ.get("METRICS_E2E_CHROMIUM", "/usr/bin/chromium")
E2E = Path(__file__).resolve().parent
ARTIFACTS = E2E / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser_type_launch_args(
    browser_type_launch_args: dict[str, Any],
) -> dict[str, Any]:
    # Playwright cannot download its own browser here; a missing Chromium is a failure,
    # never a skip, or the browser path would silently go untested.
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run 'make chromium' "
            "(or 'sudo apt-get install -y chromium')",
            pytrace=False,
        )
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [*browser_type_launch_args.get("args", []), *CHROMIUM_ARGS],
    }


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def own_page(browser: Browser, **options: Any) -> Iterator[Page]:
    """A page in a browser context of its own (`options` are the context's), closed
    after: for a fixture to `yield from`."""
    context = browser.new_context(**options)
    try:
        yield context.new_page()
    finally:
        context.close()


def record_dialogs(page: Page) -> list[Dialog]:
    """The dialogs the page opens from now on, each dismissed."""
    dialogs: list[Dialog] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog)
        dialog.dismiss()

    page.on("dialog", dismiss)
    return dialogs


def rows(page: Page) -> Locator:
    """The dashboard's event rows."""
    return page.locator("#events tbody tr.event-row")


# The tracker comes from MetricsServer.tracker_tag(), with ?visitor=, ?flush= and ?test=
# as its visitorId, flushInterval and testId: the demo is rendered per request.
DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Demo shop</title>
{tracker}
</head>
<body>
<h1>Demo shop</h1>
<button id="buy" type="button">Buy</button>
<a id="next" href="/next.html">Next page</a>
<script>
  metrics.track("page_view", {{ path: location.pathname }});
  document.getElementById("buy").addEventListener("click", function () {{
    metrics.track("checkout_clicked", {{ plan: "pro" }});
  }});
</script>
</body>
</html>
"""

NEXT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Next</title></head>
<body><h1>Thanks</h1></body></html>
"""


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A local server's handler that logs nothing."""

    def send_page(self, body: bytes, content_type: str) -> None:
        """200 with `body`, which the browser must not cache."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(server: http.server.ThreadingHTTPServer) -> Iterator[str]:
    """`server` (on 127.0.0.1) on a thread of its own until the block ends; yields its
    URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class DemoSite:
    url: str  # the demo shop's origin, not the collector's


class _DemoHandler(QuietHandler):
    pages: dict[str, bytes] = {}
    collector: MetricsServer

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        body = self.demo(query) if path == "/" else self.pages.get(path)
        if body is None:
            self.send_error(404)
            return
        self.send_page(body, "text/html; charset=utf-8")

    def demo(self, query: str) -> bytes:
        params = urllib.parse.parse_qs(query)
        options: dict[str, Any] = {}
        if "visitor" in params:
            options["visitorId"] = params["visitor"][0]
        if "flush" in params:
            options["flushInterval"] = int(params["flush"][0])
        if "test" in params:
            options["testId"] = params["test"][0]
        return DEMO_PAGE.format(tracker=self.collector.tracker_tag(**options)).encode()


def serve(pages: dict[str, bytes], collector: MetricsServer) -> Iterator[DemoSite]:
    """`pages` (and the demo shop at /) on a port of their own: another origin."""
    handler = type(
        "DemoHandler", (_DemoHandler,), {"pages": pages, "collector": collector}
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with serving(server) as url:
        yield DemoSite(url=url)


@pytest.fixture(scope="session")
def demo_site(metrics_server: MetricsServer) -> Iterator[DemoSite]:
    """A page on its own port (so its own origin) that loads the tracker from the collector."""
    yield from serve({"/next.html": NEXT_PAGE.encode()}, metrics_server)


class Collector:
    """A running collector and the API calls the browser tests make on it; with a
    `view` (the `metrics` fixture), reads and posts are the running test's only."""

    def __init__(
        self, server: MetricsServer, view: MetricsClient | None = None
    ) -> None:
        self.server = server
        self.url = server.url
        self.client = view or server.client

    def wait_for(
        self, *, count: int = 1, timeout: float = 10, **filters: str
    ) -> list[dict[str, Any]]:
        """Events through the wait-for API; fails showing what did arrive on a timeout."""
        return self.client.wait_for(count=count, timeout=timeout, **filters)

    def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        tag = self.client.test_id
        response = httpx.post(
            f"{self.url}/api/metrics/events",
            json={"events": events},
            headers={TEST_ID_HEADER: tag} if tag else {},
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def snapshot(self, **filters: str) -> dict[str, Any]:
        return self.client.snapshot(**filters)


@pytest.fixture
def collector(metrics_server: MetricsServer, metrics: MetricsClient) -> Collector:
    """The session's collector as the running test sees it."""
    return Collector(metrics_server, metrics)


@pytest.fixture(scope="module")
def shared_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """One collector for a module whose tests isolate themselves (by visitor id)."""
    path = tmp_path_factory.mktemp("shared") / "metrics.jsonl"
    with MetricsServer(path) as server:
        yield Collector(server)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The browser tests prove the front end (pages, SDKs, the plugin's tagging), not
    the collector's C-or-Python choice: make test runs them in its first pass only."""
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.once)
