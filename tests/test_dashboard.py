from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from metrics_service.app import create_app
from metrics_service.settings import Config

STATIC = Path(__file__).resolve().parent.parent / "metrics_service" / "static"


def test_dashboard_is_html_with_a_strict_policy(tmp_path: Path) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        r = c.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self' 'trusted-types-eval';" in csp
    # No external requests: nothing but the collector, for any kind of resource.
    assert csp.startswith("default-src 'none';")
    assert "connect-src 'self';" in csp and "img-src 'self' data:;" in csp
    assert "require-trusted-types-for 'script'; trusted-types 'none'" in csp
    assert "unsafe" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/static/dashboard.js"' in r.text


def test_every_script_the_page_loads_is_served(tmp_path: Path) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        page = c.get("/").text
        sources = re.findall(r'<script src="(/static/[^"]+)"', page)
        answers = {source: c.get(source) for source in sources}
    assert sources[-1] == "/static/dashboard.js"
    # every script but the two that other pages load: tracker.js and the pytest
    # plugin's test_tag.js
    others = {"tracker.js", "test_tag.js"}
    assert {s.removeprefix("/static/") for s in sources} == {
        p.name for p in STATIC.glob("*.js") if p.name not in others
    }
    for source, answer in answers.items():
        assert answer.status_code == 200, source
        assert answer.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "<script>" not in page  # no inline script: the policy would refuse it


def test_dashboard_assets_are_served(tmp_path: Path) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        js = c.get("/static/dashboard.js")
        css = c.get("/static/dashboard.css")
    assert js.status_code == 200
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "window.metricsDashboard" in js.text
    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"


def test_only_listed_assets_are_served(tmp_path: Path) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        r = c.get("/static/dashboard.html")
        traversal = c.get("/static/..%2Fapp.py")
    assert r.status_code == 404
    assert r.json() == {"detail": "no such asset 'dashboard.html'"}
    assert traversal.status_code == 404


def test_tracker_loads_from_any_origin(tmp_path: Path) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        r = c.get("/tracker.js", headers={"Origin": "http://shop.example"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "sendBeacon" in r.text


def test_unchanged_assets_answer_304(tmp_path: Path) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        first = c.get("/tracker.js")
        again = c.get("/tracker.js", headers={"If-None-Match": first.headers["etag"]})
    assert first.status_code == 200
    assert again.status_code == 304
    assert again.content == b""


def test_static_files_never_use_html_sinks() -> None:
    # Event text must reach the page as text; these APIs would parse it as HTML.
    for path in STATIC.glob("*.js"):
        source = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in source, f"{path.name} uses {sink}"


def test_static_files_never_evaluate_strings() -> None:
    # The policy lets eval() run (for test drivers); the page's own code never does.
    banned = re.compile(
        r"\beval\(|new Function\b|setTimeout\(\s*[\"'`]|setInterval\(\s*[\"'`]"
    )
    for path in STATIC.glob("*.js"):
        found = banned.search(path.read_text())
        assert found is None, f"{path.name} uses {found and found.group()}"
