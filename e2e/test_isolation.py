"""Which test sent it: the `metrics` fixture's tagging in Debian Chromium.

Every way a page on another origin sends to the collector carries the running test's
id, with no change to the page; and a beacon that test N leaves behind at unload,
arriving while test N+1 runs, belongs to N and never shows in N+1's view.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import textwrap
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from playwright.sync_api import Browser, Page

from metrics_service.testing import MetricsClient, MetricsServer

from .conftest import CHROMIUM, CHROMIUM_ARGS, QuietHandler, serving

if TYPE_CHECKING:
    from .conftest import DemoSite

pytest_plugins = ("pytester",)


def other_site(demo_site: DemoSite) -> str:
    """The demo's origin under another name: another site than the collector's
    (127.0.0.1), not only another origin, yet local (Chromium blocks a public
    site's requests to a loopback address)."""
    return demo_site.url.replace("127.0.0.1", "localhost")


README = Path(__file__).resolve().parents[1] / "README.md"

SENDERS = """async ([collector, visitor]) => {
  const url = collector + "/api/metrics/events";
  const body = (name) => JSON.stringify({ events: [{ event: name, visitor_id: visitor }] });
  const answers = {};
  const plain = { "Content-Type": "text/plain" };
  const json = { "Content-Type": "application/json" };  // a CORS preflight first
  for (const [name, init] of [
    ["fetch_plain", { method: "POST", headers: plain }],
    ["fetch_json", { method: "POST", headers: json }],
    ["fetch_keepalive", { method: "POST", headers: plain, keepalive: true }],
  ]) {
    const response = await fetch(url, { ...init, body: body(name) });
    answers[name] = (await response.json()).stored;
  }
  const request = new Request(url, { method: "POST", headers: json, body: body("fetch_request") });
  answers.fetch_request = (await (await fetch(request)).json()).stored;
  answers.xhr = await new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.onload = () => resolve(JSON.parse(xhr.responseText).stored);
    xhr.send(body("xhr"));
  });
  addEventListener("pagehide", () =>
    navigator.sendBeacon(url, new Blob([body("beacon_pagehide")], { type: "text/plain" })));
  return answers;
}"""


def test_every_way_a_page_sends_carries_the_test_id(
    page: Page, metrics: MetricsClient, demo_site: DemoSite
) -> None:
    collector = metrics.base_url
    page.goto(f"{demo_site.url}/next.html")  # another origin, no tracker
    answers = page.evaluate(SENDERS, [collector, "visitor-ways"])
    # The collector's answers were readable: CORS let them through.
    assert answers == dict.fromkeys(
        ["fetch_plain", "fetch_json", "fetch_keepalive", "fetch_request", "xhr"], 1
    )
    page.goto(f"{demo_site.url}/?visitor=visitor-unrelated")  # pagehide: the beacon

    events = metrics.wait_for(visitor_id="visitor-ways", count=6)
    assert sorted(e["event"] for e in events) == [
        "beacon_pagehide",
        "fetch_json",
        "fetch_keepalive",
        "fetch_plain",
        "fetch_request",
        "xhr",
    ]
    assert {e["test_id"] for e in events} == {metrics.test_id}


def test_the_tracker_on_another_site_carries_the_test_id(
    page: Page, metrics: MetricsClient, demo_site: DemoSite
) -> None:
    # A site the collector's cookie never goes to: only the page's own requests,
    # tagged in the page, can carry the id.
    page.goto(f"{other_site(demo_site)}/?visitor=visitor-site&flush=600000")
    assert page.evaluate("document.cookie") == ""
    page.click("#buy")
    page.evaluate("metrics.flush()")
    [first, second] = metrics.wait_for(visitor_id="visitor-site", count=2)
    assert [first["event"], second["event"]] == ["page_view", "checkout_clicked"]

    page.evaluate("metrics.track('left')")
    page.goto("about:blank")  # pagehide: tracker.js sends the rest by beacon
    [left] = metrics.wait_for("left", visitor_id="visitor-site")
    assert {first["test_id"], second["test_id"], left["test_id"]} == {metrics.test_id}


def test_a_workers_request_carries_the_cookie(
    page: Page, metrics: MetricsClient, demo_site: DemoSite
) -> None:
    # The page script does not run in a Worker; a same-site request from it still
    # carries the test's id, in the cookie the fixture set for the collector's host.
    page.goto(f"{demo_site.url}/next.html")
    native = page.evaluate(
        """(url) => new Promise((resolve) => {
        const code = `fetch(${JSON.stringify(url)}, {method: "POST", mode: "no-cors",
          credentials: "include", headers: {"Content-Type": "text/plain"},
          body: JSON.stringify({events: [{event: "from_worker", visitor_id: "visitor-worker"}]})})
          .then(() => postMessage(String(fetch).includes("[native code]")))`;
        const worker = new Worker(URL.createObjectURL(new Blob([code])));
        worker.onmessage = (message) => resolve(message.data);
        })""",
        f"{metrics.base_url}/api/metrics/events",
    )
    assert native is True  # the request went out untouched by the page's tagging
    [event] = metrics.wait_for("from_worker", visitor_id="visitor-worker")
    assert event["test_id"] == metrics.test_id


def test_tracker_js_test_id_tags_a_page_the_fixture_never_saw(
    browser: Browser, metrics: MetricsClient, demo_site: DemoSite
) -> None:
    # A context of the test's own (not pytest-playwright's) is not tagged: the id
    # comes from tracker.js's testId option, which a view's tracker_tag() sets.
    assert f'"testId": "{metrics.test_id}"' in metrics.tracker_tag()
    context = browser.new_context()
    try:
        page = context.new_page()
        test = urllib.parse.quote(str(metrics.test_id))
        page.goto(f"{other_site(demo_site)}/?visitor=visitor-own&flush=50&test={test}")
        assert "[native code]" in page.evaluate("String(fetch)")
        [event] = metrics.wait_for(visitor_id="visitor-own")
        assert event["test_id"] == metrics.test_id
    finally:
        context.close()


# Test N and N+1 run in a pytest of their own, in order, attached (--metrics-url)
# to this proxy in front of the session's collector: it holds the ingest requests
# it gets while told to, so test N's unload beacon reaches the collector in N+1.
# README's first example runs there too, as a user's suite would run it.
class Proxy(http.server.ThreadingHTTPServer):
    def __init__(self, backend: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.backend = urllib.parse.urlsplit(backend).netloc
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.hold = threading.Event()
        self.released = threading.Event()
        self.counts = {"held": 0, "forwarded": 0}
        self.lock = threading.Lock()

    def count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1


class _ProxyHandler(QuietHandler):
    server: Proxy

    def do_GET(self) -> None:
        if self.path == "/_proxy/page":
            page = UNLOADING_PAGE.replace("COLLECTOR", json.dumps(self.server.url))
            return self.answer(200, page.encode(), {"Content-Type": "text/html"})
        self.relay()

    def do_POST(self) -> None:
        control = self.path.removeprefix("/_proxy/")
        if control != self.path:
            if control == "hold":
                self.server.hold.set()
            elif control == "release":
                self.server.released.set()
            return self.answer(200, json.dumps(self.server.counts).encode(), {})
        self.relay()

    def do_DELETE(self) -> None:
        self.relay()

    def do_OPTIONS(self) -> None:
        self.relay()

    def relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        held = self.server.hold.is_set() and self.path.startswith("/api/metrics/event")
        if held:
            self.server.count("held")
            self.server.released.wait(30)
        skip = {"host", "connection", "content-length"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        backend = http.client.HTTPConnection(self.server.backend, timeout=30)
        try:
            backend.request(self.command, self.path, body=body, headers=headers)
            response = backend.getresponse()
            data = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in skip}
        finally:
            backend.close()
        if held:
            self.server.count("forwarded")
        # The browser may have closed the context while the request was held.
        with contextlib.suppress(OSError):
            self.answer(response.status, data, kept)

    def answer(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def proxy(metrics_server: MetricsServer) -> Iterator[Proxy]:
    server = Proxy(metrics_server.url)
    with serving(server):
        try:
            yield server
        finally:
            # A request still held would otherwise wait out its 30 s.
            server.released.set()


UNLOADING_PAGE = """<!doctype html><title>N</title><script>
addEventListener("pagehide", () => navigator.sendBeacon(COLLECTOR + "/api/metrics/events",
  new Blob([JSON.stringify({events: [{event: "late_unload", visitor_id: "visitor-late"}]})],
           {type: "text/plain"})));
</script>"""

TWO_TESTS = """
import time

import httpx

STATE = {}


def proxy(url, what):
    return httpx.post(f"{url}/_proxy/{what}").json()


def until(url, name):
    deadline = time.monotonic() + 20
    while proxy(url, "state")[name] < 1:
        assert time.monotonic() < deadline, proxy(url, "state")
        time.sleep(0.02)


def test_n_leaves_a_beacon_behind(page, metrics, metrics_server):
    STATE["n"] = metrics.test_id
    # Another site than the collector's: the beacon is tagged by the page script.
    page.goto(metrics_server.url.replace("127.0.0.1", "localhost") + "/_proxy/page")
    proxy(metrics_server.url, "hold")
    page.goto("about:blank")  # pagehide: the beacon leaves, and is held
    until(metrics_server.url, "held")


def test_n_plus_1_never_sees_it(page, metrics, metrics_server):
    mark = metrics.mark()
    proxy(metrics_server.url, "release")
    until(metrics_server.url, "forwarded")
    # It arrived during this test, stamped with test N's id...
    [late] = metrics_server.client.events(event="late_unload", after=mark)
    assert late["test_id"] == STATE["n"] != metrics.test_id
    # ...so this test's view never sees it.
    metrics.expect_none("late_unload", timeout=0.2)
    assert metrics.events() == []
"""


def readme_example() -> str:
    """The Python block of README's "A first test", as written."""
    section = README.read_text().split("\n### A first test\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.timeout(180)
def test_a_beacon_from_test_n_arriving_in_test_n_plus_1_is_ns(
    pytester: pytest.Pytester, proxy: Proxy, metrics_server: MetricsServer
) -> None:
    pytester.makeconftest(
        textwrap.dedent(
            f"""
            import pytest

            @pytest.fixture(scope="session")
            def browser_type_launch_args(browser_type_launch_args):
                return {{
                    **browser_type_launch_args,
                    "executable_path": {CHROMIUM!r},
                    "args": {CHROMIUM_ARGS!r},
                }}
            """
        )
    )
    pytester.makepyfile(test_two=TWO_TESTS, test_readme=readme_example())
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--metrics-url={proxy.url}"
    )
    result.assert_outcomes(passed=3)
    assert proxy.counts == {"held": 1, "forwarded": 1}
    [late] = metrics_server.client.events(event="late_unload")[-1:]
    assert late["test_id"].endswith(
        ":test_two.py::test_n_leaves_a_beacon_behind[chromium]"
    )
