from __future__ import annotations

import threading

import pytest

from metrics_service.read.filters import flat_params
from metrics_service.testing import MetricsServer

pytest_plugins = ("pytester",)


def test_flat_params_encodes_filters() -> None:
    pairs = flat_params(
        {
            "event": ["a", "b"],
            "visitor_id": "visitor-1",
            "after": 7,
            "meta": {"plan": "pro", "step": 2, "ok": True, "user": {"tier": "gold"}},
            "event_id": None,
        }
    )
    assert pairs == [
        ("event", "a"),
        ("event", "b"),
        ("visitor_id", "visitor-1"),
        ("after", "7"),
        ("meta.plan", "pro"),
        ("meta.step", "2"),
        ("meta.ok", "true"),
        ("meta.user.tier", "gold"),
    ]


def test_fixture_object_and_client(metrics_server: MetricsServer) -> None:
    client = metrics_server.client
    assert metrics_server.url.startswith("http://127.0.0.1:")
    assert client.health()["sink_path"] == str(metrics_server.jsonl_path)
    mark = client.mark()
    assert mark == 0
    client.post({"event": "page_view", "visitor_id": "visitor-1"})
    client.post(
        {"event": "signup", "visitor_id": "visitor-1", "metadata": {"plan": "pro"}}
    )
    client.post(
        {"event": "signup", "visitor_id": "visitor-2", "metadata": {"plan": "free"}}
    )
    pro = client.snapshot(meta={"plan": "pro"})
    assert pro["total"] == 1
    assert pro["last_events"][0]["visitor_id"] == "visitor-1"
    assert [e["seq"] for e in client.events(after=1)] == [2, 3]
    got = client.wait_for("signup", count=2, after=mark)
    assert [e["metadata"]["plan"] for e in got] == ["pro", "free"]
    series = client.timeseries("1d", event="signup")
    assert series["buckets"][0]["by_event"] == {"signup": 2}
    assert client.mark() == 3
    assert client.reset() == 3
    assert client.snapshot()["total"] == 0
    assert client.mark() == 3
    assert len(metrics_server.jsonl_path.read_bytes().splitlines()) == 3


def test_wait_for_returns_event_posted_meanwhile(metrics_server: MetricsServer) -> None:
    client = metrics_server.client
    mark = client.mark()
    poster = threading.Timer(
        0.2,
        client.post,
        [{"event": "checkout", "visitor_id": "visitor-9", "metadata": {"n": 1}}],
    )
    poster.start()
    try:
        events = client.wait_for("checkout", after=mark, meta={"n": 1}, timeout=10)
    finally:
        poster.join(10)
    assert [e["visitor_id"] for e in events] == ["visitor-9"]


def test_wait_for_timeout_says_what_arrived(metrics_server: MetricsServer) -> None:
    client = metrics_server.client
    mark = client.mark()
    client.post(
        {"event": "signup", "visitor_id": "visitor-1", "metadata": {"plan": "free"}}
    )
    client.post({"event": "page_view", "visitor_id": "visitor-1"})
    with pytest.raises(AssertionError) as caught:
        client.wait_for(
            "signup", count=2, timeout=0.2, after=mark, meta={"plan": "free"}
        )
    message = str(caught.value)
    assert message.startswith("expected 2 event(s) matching")
    assert "within 0.2s, got 1:" in message
    assert "signup" in message
    assert '{"plan":"free"}' in message
    assert "page_view" in message  # what else arrived, so the failure explains itself
    assert f"after seq {mark}: 2 in all" in message


def test_plugin_fixture_in_a_users_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_signup_is_tracked(metrics_server):
            client = metrics_server.client
            mark = client.mark()
            client.post({"event": "signup", "visitor_id": "visitor-1",
                         "metadata": {"plan": "pro"}})
            [event] = client.wait_for("signup", after=mark, meta={"plan": "pro"})
            assert event["visitor_id"] == "visitor-1"
            assert metrics_server.jsonl_path.exists()

        def test_missing_event_fails_with_context(metrics_server):
            metrics_server.client.post({"event": "page_view", "visitor_id": "visitor-1"})
            metrics_server.client.wait_for("purchase", timeout=0.1)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*expected 1 event(s) matching event='purchase'*"])
    result.stdout.fnmatch_lines(["*#1 page_view visitor=visitor-1*"])
