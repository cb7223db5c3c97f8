"""Browser fixtures: Debian's Chromium driven by Playwright, and a demo site on another origin.

The collector itself comes from the `metrics_server` fixture (metrics_service.testing).
"""

from __future__ import annotations

import html
import http.server
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from metrics_service.testing import MetricsServer

CHROMIUM = os.environ.get("METRICS_E2E_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
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


DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Demo shop</title>
<script src="{collector}/tracker.js"></script>
</head>
<body>
<h1>Demo shop</h1>
<button id="buy" type="button">Buy</button>
<a id="next" href="/next.html">Next page</a>
<script>
  var params = new URLSearchParams(location.search);
  metrics.init({{
    endpoint: {endpoint},
    visitorId: params.get("visitor") || undefined,
    flushInterval: Number(params.get("flush")) || undefined,
  }});
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


@dataclass
class DemoSite:
    url: str  # the demo shop's origin, not the collector's


class _DemoHandler(http.server.BaseHTTPRequestHandler):
    pages: dict[str, bytes] = {}

    def do_GET(self) -> None:
        body = self.pages.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def demo_site(collector: Collector) -> Iterator[DemoSite]:
    """A page on its own port (so its own origin) that loads the tracker from the collector."""
    page = DEMO_PAGE.format(
        collector=html.escape(collector.url),
        endpoint=json.dumps(collector.url),
    )
    handler = type(
        "DemoHandler",
        (_DemoHandler,),
        {"pages": {"/": page.encode(), "/next.html": NEXT_PAGE.encode()}},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield DemoSite(url=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Collector:
    """A running `metrics_server` and the API calls the browser tests make on it."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.url = server.url

    def wait_for(
        self, *, count: int = 1, timeout: float = 10, **filters: str
    ) -> list[dict[str, Any]]:
        """Events through the wait-for API; fails showing what did arrive on a timeout."""
        return self.server.client.wait_for(count=count, timeout=timeout, **filters)

    def post(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/api/metrics/events", json={"events": events})
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def snapshot(self, **filters: str) -> dict[str, Any]:
        return self.server.client.snapshot(**filters)


@pytest.fixture
def collector(metrics_server: MetricsServer) -> Collector:
    """A fresh collector for each test."""
    return Collector(metrics_server)


@pytest.fixture(scope="module")
def shared_collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """One collector for a module whose tests isolate themselves (by visitor id)."""
    path = tmp_path_factory.mktemp("shared") / "metrics.jsonl"
    with MetricsServer(path) as server:
        yield Collector(server)
