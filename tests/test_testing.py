from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from metrics_service.read.filters import flat_params
from metrics_service.testing import CLEAN_EXIT, MetricsClient, MetricsServer

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


def test_loading_the_plugin_imports_neither_the_app_nor_httpx() -> None:
    # Every pytest run of a project that installs the package loads the plugin.
    code = (
        "import sys, pytest; before = set(sys.modules);"
        " import metrics_service.testing;"
        " print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(loaded) == [
        "metrics_service",
        "metrics_service.client",
        "metrics_service.testing",
    ]


READ = "read-token-5f2e"
INGEST = "ingest-token-0c7d"


def test_client_sends_the_read_token(tmp_path: Path) -> None:
    env = {"METRICS_READ_TOKEN": READ, "METRICS_INGEST_TOKEN": None}
    with MetricsServer(tmp_path / "m.jsonl", env=env, token=READ) as server:
        client = server.client
        mark = client.mark()
        client.post({"event": "signup", "visitor_id": "visitor-1"})
        assert client.snapshot(event="signup")["total"] == 1
        [event] = client.wait_for("signup", after=mark)
        assert event["visitor_id"] == "visitor-1"
        assert client.reset() == 1
        # Without the token the same server refuses to be read.
        with MetricsClient(server.url) as tokenless:
            with pytest.raises(httpx.HTTPStatusError) as caught:
                tokenless.snapshot()
            assert caught.value.response.status_code == 401


def test_client_with_both_tokens(tmp_path: Path) -> None:
    env = {"METRICS_READ_TOKEN": READ, "METRICS_INGEST_TOKEN": INGEST}
    with MetricsServer(
        tmp_path / "m.jsonl", env=env, token=READ, ingest_token=INGEST
    ) as server:
        server.client.post({"event": "signup", "visitor_id": "visitor-1"})
        assert len(server.client.wait_for("signup", timeout=2)) == 1
    assert server.stop() in CLEAN_EXIT


def test_a_server_that_exits_at_start_up_says_why(tmp_path: Path) -> None:
    server = MetricsServer(tmp_path / "m.jsonl", args=["--capacity", "0"])
    with pytest.raises(RuntimeError) as caught:
        server.start()
    message = str(caught.value)
    assert "exited at start-up with code 2" in message
    assert "error: --capacity: must be between 1" in message
    assert server.process is not None and server.process.returncode == 2


def test_flags_cwd_log_and_a_clean_exit(tmp_path: Path) -> None:
    # A relative path, resolved against the server's working directory.
    server = MetricsServer(
        Path("relative.jsonl"),
        args=["--log-level", "info"],
        settings_as="flags",
        env={"METRICS_PORT": "not-a-port"},  # the --port flag wins
        cwd=tmp_path,
        log=tmp_path / "out.log",
    )
    with server:
        assert server.client.post({"event": "e", "visitor_id": "visitor-1"})
        assert server.client.health()["sink_path"] == "relative.jsonl"
    assert server.stop(expect=CLEAN_EXIT) in CLEAN_EXIT
    assert (tmp_path / "relative.jsonl").read_bytes().count(b"\n") == 1
    assert "Uvicorn running on" in (tmp_path / "out.log").read_text()
    assert "Uvicorn running on" in server.output()


def test_expect_none_passes_and_fails_with_the_offenders(
    metrics_server: MetricsServer,
) -> None:
    client = metrics_server.client
    mark = client.mark()
    client.post({"event": "page_view", "visitor_id": "visitor-1"})
    assert client.expect_none("error", timeout=0.05, after=mark) is None
    client.post(
        {"event": "error", "visitor_id": "visitor-1", "metadata": {"code": 500}}
    )
    with pytest.raises(AssertionError) as caught:
        client.expect_none(after=mark, meta={"code__gte": 500})
    message = str(caught.value)
    assert message.startswith(
        f"expected no event matching after={mark}, meta={{'code__gte': 500}}"
        " within 0.5s, got 1:\n  #2 error visitor=visitor-1 at "
    )
    assert '{"code":500}' in message
    header, others = message.split("; the newest that did not match:\n")
    assert header.endswith(
        f"events after seq {mark}: 2 in all, by name {{error: 1, page_view: 1}}"
    )
    assert others.startswith(f"  #{mark + 1} page_view visitor=visitor-1")


def test_wait_for_exactly_fails_when_one_more_arrives(
    metrics_server: MetricsServer,
) -> None:
    client = metrics_server.client
    mark = client.mark()
    client.post({"event": "signup", "visitor_id": "visitor-1"})
    [one] = client.wait_for("signup", after=mark, exactly=True, settle=0.05)
    assert one["seq"] == mark + 1
    client.post({"event": "signup", "visitor_id": "visitor-2"})
    with pytest.raises(AssertionError) as caught:
        client.wait_for("signup", after=mark, exactly=True, settle=0.05, timeout=1)
    message = str(caught.value)
    assert message.startswith(
        f"expected exactly 1 event(s) matching event='signup', after={mark}"
        " within 1s and 0.05s of quiet, got 2:\n"
    )
    assert "#1 signup visitor=visitor-1" in message
    assert "#2 signup visitor=visitor-2" in message
    assert message.endswith("the newest that did not match:\n  (none)")


def test_expect_sequence_returns_its_events_or_says_what_came(
    metrics_server: MetricsServer,
) -> None:
    client = metrics_server.client
    mark = client.mark()
    for name, visitor in [
        ("page_view", "visitor-1"),
        ("signup_start", "visitor-2"),
        ("other", "visitor-1"),
        ("signup_start", "visitor-1"),
    ]:
        client.post({"event": name, "visitor_id": visitor})
    found = client.expect_sequence(
        ["page_view", "signup_start"], per="visitor_id", after=mark, timeout=1
    )
    assert [e["seq"] for e in found] == [1, 4]
    with pytest.raises(AssertionError) as caught:
        client.expect_sequence(
            ["page_view", "signup_start", "signup_done"],
            per="visitor_id",
            visitor_id__prefix="visitor-",
            after=mark,
            timeout=0.1,
        )
    message = str(caught.value)
    assert message.startswith(
        "expected the sequence page_view -> signup_start -> signup_done from one"
        " visitor_id among events matching visitor_id__prefix='visitor-',"
        f" after={mark} within 0.1s, got 3 of those names:\n"
        "  #1 page_view visitor=visitor-1"
    )
    assert "#3 other visitor=visitor-1" in message.split("did not match:")[1]
