"""The original API tests, with Playwright's request context against a real server.

The session's collector is shared: the request context sends the test's id, and the
reads filter on it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import APIRequestContext, Playwright

from metrics_service.client import TEST_ID_HEADER
from metrics_service.testing import DEFAULT_CAPACITY, MetricsClient, MetricsServer


@pytest.fixture
def api(
    playwright: Playwright, metrics_server: MetricsServer, metrics: MetricsClient
) -> Iterator[APIRequestContext]:
    assert metrics.test_id is not None
    context = playwright.request.new_context(
        base_url=metrics_server.url,
        extra_http_headers={TEST_ID_HEADER: metrics.test_id},
    )
    yield context
    context.dispose()


def test_posted_events_show_in_the_snapshot(
    api: APIRequestContext, metrics_server: MetricsServer, metrics: MetricsClient
) -> None:
    events = [
        {"visitor_id": "visitor-e2e", "event": "page_view", "metadata": {"path": "/"}},
        {
            "visitor_id": "visitor-e2e",
            "event": "link_click",
            "metadata": {"href": "/a"},
        },
        {"visitor_id": "visitor-e2e", "event": "page_view", "metadata": {"path": "/a"}},
    ]
    seqs = []
    for body in events:
        response = api.post("/api/metrics/event", data=body)
        assert response.status == 202
        reply = response.json()
        assert reply["ok"] is True
        assert reply["stored"] == 1
        assert reply["file"] == str(metrics_server.jsonl_path)
        seqs.append(reply["seq"])
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]

    response = api.get(
        "/api/metrics/behavior", params={"test_id": str(metrics.test_id)}
    )
    assert response.status == 200
    snap = response.json()
    assert snap["total"] == 3
    assert snap["by_event"] == [
        {"event": "page_view", "count": 2},
        {"event": "link_click", "count": 1},
    ]
    newest = snap["last_events"]
    assert [e["seq"] for e in newest] == seqs[::-1]
    assert [e["event"] for e in newest] == ["page_view", "link_click", "page_view"]
    assert [e["metadata"] for e in newest] == [ev["metadata"] for ev in events[::-1]]
    assert all(e["visitor_id"] == "visitor-e2e" for e in newest)
    assert all(e["test_id"] == metrics.test_id for e in newest)
    assert all(e["received_at"].endswith("Z") for e in newest)
    assert snap["last_seq"] >= seqs[-1]
    assert snap["file_size_bytes"] == metrics_server.jsonl_path.stat().st_size > 0
    lines = metrics_server.jsonl_path.read_text().splitlines()
    assert sum(f'"test_id":"{metrics.test_id}"' in line for line in lines) == 3


def test_health_reports_capacity_and_sink(
    api: APIRequestContext, metrics_server: MetricsServer
) -> None:
    response = api.get("/api/metrics/behavior/health")
    assert response.status == 200
    health = response.json()
    assert health["ok"] is True
    assert health["ring_capacity"] == DEFAULT_CAPACITY
    assert health["sink_path"] == str(metrics_server.jsonl_path)
    assert health["sink_exists"] is True
    assert health["version"]
    before = health["sink_bytes"]

    reply = api.post(
        "/api/metrics/event", data={"visitor_id": "visitor-e2e", "event": "page_view"}
    )
    assert reply.ok
    health = api.get("/api/metrics/behavior/health").json()
    assert health["ring_size"] >= 1
    assert health["sink_bytes"] > before
    assert f'"seq":{reply.json()["seq"]},' in metrics_server.jsonl_path.read_text()
