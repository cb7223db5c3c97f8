from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from metrics_service.read.query import flat_params
from metrics_service.testing import (
    CLEAN_EXIT,
    MetricsClient,
    MetricsServer,
    _refusals_message,
    free_port,
    make_test_id,
)

# Independent of the C-or-Python choice: make test runs it in its first pass only.
pytestmark = pytest.mark.once

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


def test_fixture_object_and_client(
    metrics_server: MetricsServer, metrics: MetricsClient
) -> None:
    assert metrics_server.url.startswith("http://127.0.0.1:")
    assert metrics.health()["sink_path"] == str(metrics_server.jsonl_path)
    assert metrics.test_id is not None
    assert metrics.test_id.endswith(
        ":tests/test_testing.py::test_fixture_object_and_client"
    )
    mark = metrics.mark()
    metrics.post({"event": "page_view", "visitor_id": "visitor-1"})
    metrics.post(
        {"event": "signup", "visitor_id": "visitor-1", "metadata": {"plan": "pro"}}
    )
    metrics.post(
        {"event": "signup", "visitor_id": "visitor-2", "metadata": {"plan": "free"}}
    )
    pro = metrics.snapshot(meta={"plan": "pro"})
    assert pro["total"] == 1
    assert pro["last_events"][0]["visitor_id"] == "visitor-1"
    assert [e["seq"] for e in metrics.events(after=mark + 1)] == [mark + 2, mark + 3]
    got = metrics.wait_for("signup", count=2)
    assert [e["metadata"]["plan"] for e in got] == ["pro", "free"]
    assert {e["test_id"] for e in got} == {metrics.test_id}
    series = metrics.timeseries("1d", event="signup")
    assert series["buckets"][0]["by_event"] == {"signup": 2}
    assert metrics.mark() == mark + 3
    lines = metrics_server.jsonl_path.read_text().splitlines()
    assert sum(f'"test_id":"{metrics.test_id}"' in line for line in lines) == 3


def test_a_view_sees_only_its_own_test(
    metrics_server: MetricsServer, metrics: MetricsClient
) -> None:
    other = metrics_server.client.view("someone-else")
    other.post({"event": "signup", "visitor_id": "visitor-1"})
    untagged = metrics_server.client.post(
        {"event": "signup", "visitor_id": "visitor-1"}
    )
    metrics.post({"event": "signup", "visitor_id": "visitor-1"})
    [mine] = metrics.wait_for("signup", exactly=True, settle=0.05)
    assert mine["test_id"] == metrics.test_id
    assert mine["seq"] == untagged["seq"] + 1
    assert other.events()[-1]["test_id"] == "someone-else"
    # The unbound client sees every test, and test_id=None lifts a view's own.
    assert metrics.snapshot(test_id=None, after=untagged["seq"] - 2)["total"] == 3
    assert "test_id" not in metrics_server.client.events(event_id=None)[-2]
    metrics.expect_none("signup", visitor_id="visitor-2", timeout=0.01)
    other.close()  # a view shares its parent's connections: closing it closes nothing
    assert not metrics_server.client.closed and not metrics.closed


def test_make_test_id_is_ascii_and_bounded() -> None:
    assert (
        make_test_id("tests/a.py::test_x[1-2]", "run1")
        == "run1:tests/a.py::test_x[1-2]"
    )
    assert make_test_id("t.py::test[\u00e9]", "r") == "r:t.py::test[\\xe9]"
    long = make_test_id("t.py::test[" + "x" * 400 + "]", "r")
    assert len(long) == 256
    assert long.startswith("r:t.py::test[xxx")
    assert long != make_test_id("t.py::test[" + "x" * 401 + "]", "r")


def test_tracker_tag_points_at_the_collector(metrics: MetricsClient) -> None:
    tag = metrics.tracker_tag(flushInterval=100, visitorId="</script>")
    url = metrics.base_url
    assert tag.startswith(f'<script src="{url}/tracker.js"></script>\n<script>')
    config = tag.split("metrics.init(", 1)[1].rsplit(");</script>", 1)[0]
    assert "</script>" not in config
    assert json.loads(config) == {
        "endpoint": url,
        "testId": metrics.test_id,
        "flushInterval": 100,
        "visitorId": "</script>",
    }


def test_wait_for_returns_event_posted_meanwhile(metrics: MetricsClient) -> None:
    poster = threading.Timer(
        0.2,
        metrics.post,
        [{"event": "checkout", "visitor_id": "visitor-9", "metadata": {"n": 1}}],
    )
    poster.start()
    try:
        events = metrics.wait_for("checkout", meta={"n": 1}, timeout=10)
    finally:
        poster.join(10)
    assert [e["visitor_id"] for e in events] == ["visitor-9"]


def test_wait_for_timeout_says_what_arrived(metrics: MetricsClient) -> None:
    mark = metrics.mark()
    metrics.post(
        {"event": "signup", "visitor_id": "visitor-1", "metadata": {"plan": "free"}}
    )
    metrics.post({"event": "page_view", "visitor_id": "visitor-1"})
    with pytest.raises(AssertionError) as caught:
        metrics.wait_for(
            "signup", count=2, timeout=0.2, after=mark, meta={"plan": "free"}
        )
    message = str(caught.value)
    assert message.startswith("expected 2 event(s) matching")
    assert "within 0.2s, got 1:" in message
    assert "signup" in message
    assert '{"plan":"free"}' in message
    assert "page_view" in message  # what else arrived, so the failure explains itself
    assert f"after seq {mark} from test {metrics.test_id!r}: 2 in all" in message


# Users' suites without a browser: pytest-playwright need not load (it takes a while).
NO_BROWSER = ("-p", "no:cacheprovider", "-p", "no:playwright")

USER_SUITE = """
import httpx
import pytest

SEEN = []


def test_signup_is_tracked(metrics_server, metrics):
    SEEN.append(metrics_server.process.pid)
    metrics.post({"event": "signup", "visitor_id": "visitor-1", "metadata": {"plan": "pro"}})
    [event] = metrics.wait_for("signup", meta={"plan": "pro"})
    assert event["visitor_id"] == "visitor-1"


def test_the_next_test_sees_none_of_it(metrics_server, metrics):
    SEEN.append(metrics_server.process.pid)
    assert SEEN[0] == SEEN[1]  # one collector for the session
    metrics.expect_none("signup", timeout=0.05)
    assert metrics_server.client.snapshot(event="signup")["total"] == 1


def test_missing_event_fails_with_context(metrics):
    metrics.post({"event": "page_view", "visitor_id": "visitor-1"})
    metrics.wait_for("purchase", timeout=0.1)


def test_a_refusal_fails_the_test(metrics):
    with pytest.raises(httpx.HTTPStatusError):
        metrics.post({"event": "x" * 65, "visitor_id": "visitor-1"})


@pytest.mark.metrics_allow_rejections
def test_the_marker_allows_refusals(metrics):
    with pytest.raises(httpx.HTTPStatusError):
        metrics.post({"event": "", "visitor_id": "visitor-refused"})


def test_the_read_token_is_in_force(metrics_server, metrics):
    # The fixtures' reads above carried METRICS_READ_TOKEN; a read without it is a 401.
    with httpx.Client(base_url=metrics_server.url) as tokenless:
        assert tokenless.get("/api/metrics/behavior").status_code == 401
    assert metrics.snapshot()["total"] == 0
"""

# What the plugin does per test, counted: the budget of under 5 ms a test holds while it
# is one request (the quarantine's, after the body) and no collector start.
PER_TEST = """
import pytest

REQUESTS = []
COLLECTORS = set()


@pytest.fixture(scope="module", autouse=True)
def count_requests(metrics_server):
    hooks = metrics_server.client._http.event_hooks
    metrics_server.client._http.event_hooks = {
        **hooks, "request": [lambda request: REQUESTS.append(request.url.path)]
    }
    yield
    metrics_server.client._http.event_hooks = hooks


@pytest.mark.parametrize("n", range(5))
def test_one_request_a_test(metrics_server, metrics, n):
    COLLECTORS.add(metrics_server.process.pid)
    assert len(COLLECTORS) == 1
    # Each test before this one: one read of its refusals, after its body.
    assert REQUESTS == ["/api/metrics/behavior/rejected"] * n
"""


def test_plugin_fixtures_in_a_users_suite(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The collector the plugin starts inherits it, and the fixtures' client sends it.
    monkeypatch.setenv("METRICS_READ_TOKEN", READ)
    monkeypatch.delenv("METRICS_INGEST_TOKEN", raising=False)
    pytester.makepyfile(
        test_suite=USER_SUITE,
        test_per_test=PER_TEST,
        test_ini=(
            "def test_capacity_from_ini(metrics):\n"
            "    assert metrics.health()['ring_capacity'] == 1234\n"
        ),
    )
    pytester.makeini("[pytest]\nmetrics_capacity = 1234\n")
    result = pytester.runpytest_subprocess(*NO_BROWSER)
    result.assert_outcomes(passed=10, failed=2)
    result.stdout.fnmatch_lines(["*expected 1 event(s) matching event='purchase'*"])
    result.stdout.fnmatch_lines(["*page_view visitor=visitor-1*"])
    # The failure points at the test's line, not into the client's own source.
    assert "def wait_for(" not in result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*test_a_refusal_fails_the_test*",
            "the collector refused 1 request(s) carrying this test's id"
            " '*:test_suite.py::test_a_refusal_fails_the_test'"
            " (newest first; mark the test @pytest.mark.metrics_allow_rejections*",
            "  #* 422 /api/metrics/event event=* visitor=visitor-1: *64*",
            '    body: {"event":"xxx*',
        ]
    )


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
        "metrics_service.collector",
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


@pytest.mark.metrics_allow_rejections
def test_a_failed_wait_names_the_tests_refusals(
    metrics_server: MetricsServer, metrics: MetricsClient
) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        metrics.post({"event": "x" * 65, "visitor_id": "visitor-1"})
    with pytest.raises(httpx.HTTPStatusError):  # another test's: not listed
        metrics_server.client.view("another").post({"event": "", "visitor_id": "v"})
    with pytest.raises(AssertionError) as caught:
        metrics.wait_for(visitor_id="visitor-1", timeout=0.05)
    message = str(caught.value)
    refused = message.split("the newest that did not match:\n  (none)\n", 1)[1]
    assert re.fullmatch(
        f"requests carrying test id {re.escape(repr(metrics.test_id))} that the"
        " collector refused \\(1, newest first, at most 5\\):\n"
        "  #\\d+ 422 /api/metrics/event event=x{65} visitor=visitor-1: .*64.*\n"
        '    body: {"event":"x{65}","visitor_id":"visitor-1"}',
        refused,
    ), refused


def test_expect_none_passes_and_fails_with_the_offenders(
    metrics: MetricsClient,
) -> None:
    client = metrics
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
        f" within 0.5s, got 1:\n  #{mark + 2} error visitor=visitor-1 at "
    )
    assert '{"code":500}' in message
    header, others = message.split("; the newest that did not match:\n")
    assert header.endswith(
        f"events after seq {mark} from test {client.test_id!r}: 2 in all,"
        " by name {error: 1, page_view: 1}"
    )
    assert others.startswith(f"  #{mark + 1} page_view visitor=visitor-1")


def test_wait_for_exactly_fails_when_one_more_arrives(
    metrics: MetricsClient,
) -> None:
    client = metrics
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
    assert f"#{mark + 1} signup visitor=visitor-1" in message
    assert f"#{mark + 2} signup visitor=visitor-2" in message
    assert message.endswith("the newest that did not match:\n  (none)")


def test_expect_sequence_returns_its_events_or_says_what_came(
    metrics: MetricsClient,
) -> None:
    client = metrics
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
    assert [e["seq"] for e in found] == [mark + 1, mark + 4]
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
        f"  #{mark + 1} page_view visitor=visitor-1"
    )
    assert f"#{mark + 3} other visitor=visitor-1" in message.split("did not match:")[1]


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_failures() -> list[str]:
    """The failure messages README's "Every assertion, and how it fails" shows."""
    text = README.read_text()
    section = text.split("\n### Every assertion, and how it fails\n", 1)[1]
    section = section.split("\n### ", 1)[0]
    return re.findall(r"\n```\n(.*?)\n```\n", section, re.DOTALL)


def comparable(message: str) -> str:
    """A failure message without what differs from run to run."""
    message = re.sub(r"#\d+ ", "#N ", message)
    message = re.sub(r" at \S+ metadata=", " at T metadata=", message)
    return re.sub(r"'[0-9a-f]{8}:[^']*'", "'T'", message)  # a test id


def test_readmes_failure_messages_are_the_real_ones(
    metrics_server: MetricsServer, metrics: MetricsClient
) -> None:
    for name, visitor, metadata in [
        ("page_view", "visitor-1", {"path": "/pricing"}),
        ("error", "visitor-1", {"code": 502}),
        ("signup_start", "visitor-1", {}),
        ("signup_done", "visitor-2", {}),
        ("signup_done", "visitor-1", {}),
    ]:
        metrics.post({"event": name, "visitor_id": visitor, "metadata": metadata})
    failures = []
    for check in [
        lambda: metrics.wait_for("signup", meta={"plan": "pro"}, timeout=0.3),
        lambda: metrics.expect_none("error", meta={"code__gte": 500}),
        lambda: metrics.wait_for("signup_done", exactly=True, settle=0.3),
        lambda: metrics.expect_sequence(
            ["page_view", "signup_start", "signup_done"],
            per="visitor_id",
            visitor_id__prefix="visitor-2",
            timeout=0.2,
        ),
    ]:
        with pytest.raises(AssertionError) as caught:
            check()
        failures.append(comparable(str(caught.value)))
    # A refusal, sent from another test's view so that this test does not fail.
    other = metrics_server.client.view(f"{metrics.test_id}-refused")
    with pytest.raises(httpx.HTTPStatusError):
        other.post({"event": "", "visitor_id": "visitor-1"})
    refused = other.rejections(limit=20)
    assert refused is not None
    failures.append(comparable(_refusals_message(other, refused)))
    with pytest.raises(AssertionError) as caught:
        other.wait_for("checkout", timeout=0.3)
    failures.append(comparable(str(caught.value)))
    assert failures == [comparable(shown) for shown in readme_failures()]


PLAN = {
    "events": {
        "signup": {"required": ["plan"]},
        "page_view": {"schema": {"type": "object", "properties": {"path": {}}}},
        "checkout": {},
        "search": {"description": "no keys declared: any are fine"},
    }
}
# Each test using the collector notes its xdist worker and the collector's pid.
NOTE = """
import os

def note(server):
    with open(COLLECTORS, "a") as notes:
        notes.write(f"{os.environ['PYTEST_XDIST_WORKER']} {server.process.pid}\\n")
"""
COVERAGE_A = (
    NOTE
    + """
def test_signup(metrics, metrics_server):
    note(metrics_server)
    metrics.post({"event": "signup", "visitor_id": "visitor-1",
                  "metadata": {"plan": "pro", "coupon": "X"}})
    metrics.post({"event": "search", "visitor_id": "visitor-1", "metadata": {"q": "a"}})

def test_signup_again(metrics_server):
    note(metrics_server)
    assert metrics_server.client.health()["ring_capacity"] == 4321
"""
)
COVERAGE_B = (
    NOTE
    + """
def test_page_view(metrics, metrics_server):
    note(metrics_server)
    metrics.post({"event": "page_view", "visitor_id": "visitor-1",
                  "metadata": {"path": "/", "referrer": "r", "utm": "u"}})
    metrics.post({"event": "debug_ping", "visitor_id": "visitor-1"})

def test_no_collector():
    pass

def test_page_view_again(metrics_server):
    note(metrics_server)
"""
)


@pytest.mark.slow
def test_coverage_summary_across_xdist_workers(pytester: pytest.Pytester) -> None:
    notes = pytester.path / "collectors.txt"
    pytester.makepyfile(
        **{
            name: text.replace("COLLECTORS", repr(str(notes)))
            for name, text in (("test_a", COVERAGE_A), ("test_b", COVERAGE_B))
        }
    )
    (pytester.path / "plan.json").write_text(json.dumps(PLAN))
    pytester.makeini("[pytest]\nmetrics_taxonomy = plan.json\n")
    result = pytester.runpytest_subprocess(
        *NO_BROWSER,
        "-n",
        "2",
        "--dist",
        "loadfile",
        "--metrics-coverage-fail",
        "--metrics-capacity=4321",
    )
    result.assert_outcomes(passed=5)
    # One collector per worker, started once: both files' tests (one file a worker)
    # each saw their worker's.
    collectors: dict[str, set[str]] = {}
    for line in notes.read_text().splitlines():
        worker, pid = line.split()
        collectors.setdefault(worker, set()).add(pid)
    assert sorted(collectors) == ["gw0", "gw1"]
    assert [len(pids) for pids in collectors.values()] == [1, 1]
    assert collectors["gw0"] != collectors["gw1"]
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*= metrics tracking plan =*",
            f"{pytester.path / 'plan.json'}: 4 planned event(s); 4 distinct event"
            " name(s) seen",
            "planned, never seen (1): checkout",
            "seen, not in the plan (1): debug_ping",
            "metadata keys outside page_view's schema: referrer, utm",
            "metadata keys outside signup's schema: coupon",
            "--metrics-coverage-fail: these gaps fail the run",
        ]
    )


ATTACHED = """
import os

def test_uses_it(metrics_server, metrics):
    assert metrics_server.attached and metrics_server.process is None
    worker = os.environ["PYTEST_XDIST_WORKER"]
    metrics.post({"event": "NAME", "visitor_id": f"visitor-{worker}"})
    [event] = metrics.wait_for("NAME")
    assert event["test_id"] == metrics.test_id
"""


@pytest.mark.slow
def test_attached_to_a_running_collector(
    pytester: pytest.Pytester, metrics_server: MetricsServer, metrics: MetricsClient
) -> None:
    # This suite's collector, also holding events of other tests and other runs.
    metrics.post({"event": "not_this_run", "visitor_id": "visitor-1"})
    mark = metrics.mark()
    pytester.makepyfile(
        test_one=ATTACHED.replace("NAME", "signup"),
        test_two=ATTACHED.replace("NAME", "page_view"),
    )
    (pytester.path / "plan.json").write_text(json.dumps(PLAN))
    result = pytester.runpytest_subprocess(
        *NO_BROWSER,
        "-n",
        "2",
        "--dist",
        "loadfile",
        f"--metrics-url={metrics_server.url}/",
        "--metrics-taxonomy=plan.json",
    )
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK  # gaps fail the run only when asked
    result.stdout.fnmatch_lines(
        [
            "plan.json: 4 planned event(s); 2 distinct event name(s) seen",
            "planned, never seen (2): checkout, search",
        ]
    )
    assert "not_this_run" not in result.stdout.str()
    # Both workers used the one collector, under one run id.
    events = metrics_server.client.events(
        after=mark, test_id__contains=".py::test_uses_it"
    )
    assert sorted(e["visitor_id"] for e in events) == ["visitor-gw0", "visitor-gw1"]
    runs = {e["test_id"].split(":", 1)[0] for e in events}
    assert sorted(e["test_id"] for e in events) == [
        f"{run}:{name}.py::test_uses_it"
        for run in runs
        for name in ("test_one", "test_two")
    ]
    assert len(runs) == 1


def test_attaching_to_a_collector_that_is_not_there() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    server = MetricsServer.attach(url + "/")
    with pytest.raises(RuntimeError, match=f"^no collector answers at {url}: Connect"):
        server.start()
    server.stop()
    assert server.process is None
    with pytest.raises(ValueError, match="not a collector's base URL"):
        MetricsServer.attach("127.0.0.1:8001")


def test_a_bad_tracking_plan_is_a_usage_error(tmp_path: Path) -> None:
    from metrics_service.testing import _load_plan

    plan = tmp_path / "plan.json"
    plan.write_text('{"events": ["signup"]}')
    with pytest.raises(
        pytest.UsageError, match=re.escape('expected {"events": {"<name>": {...}}}')
    ):
        _load_plan(str(plan))
    plan.write_text("{")
    with pytest.raises(
        pytest.UsageError, match=f"--metrics-taxonomy {plan}: Expecting"
    ):
        _load_plan(str(plan))
    with pytest.raises(pytest.UsageError, match="No such file"):
        _load_plan(str(tmp_path / "missing.json"))
    plan.write_text(json.dumps(PLAN))
    assert _load_plan(str(plan)) == PLAN["events"]
