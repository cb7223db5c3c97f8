"""Helpers for users' own test suites: a client and a pytest plugin.

The plugin (registered through the `pytest11` entry point) gives a session-scoped
`metrics_server` fixture (one collector per pytest process, so per xdist worker, on a
free port with a temporary JSONL file; or the one at --metrics-url) and a `metrics`
fixture: a MetricsClient bound to the running test's id, that sees only the events
that test sent, and fails the test when the collector refused one of them.

Every pytest run in a project that installs this package loads this module, so it
imports only the standard library and pytest: httpx, orjson and the app's own modules
are imported when a client or a server is first used.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from metrics_service.client import MetricsClient, describe_refusal
from metrics_service.collector import CLEAN_EXIT, SERVE_ARGV, MetricsServer, free_port

__all__ = [
    "CLEAN_EXIT",
    "DEFAULT_CAPACITY",
    "SERVE_ARGV",
    "MetricsClient",
    "MetricsServer",
    "free_port",
    "make_test_id",
]

# The plugin: options, the session's collector, per-test views, coverage.

DEFAULT_CAPACITY = 100_000  # the session's events, so views find them in the ring
MAX_TEST_ID = 256  # the collector's limit (ingest/test_tag.py)
ALLOW_REJECTIONS = "metrics_allow_rejections"
ASYNC_CONTEXT = (
    "metrics: an async Playwright context is not tagged with the test's id; load"
    " tracker.js with metrics.tracker_tag(), or send the X-Metrics-Test-Id header"
)
_STATE = pytest.StashKey["_Plugin"]()
_VIEW = pytest.StashKey[MetricsClient]()


def make_test_id(nodeid: str, run: str) -> str:
    """The id a test's events carry: `<run>:<nodeid>`, ASCII, at most 256 characters
    (a longer node id keeps its start and a digest of the whole)."""
    text = nodeid.encode("ascii", "backslashreplace").decode()
    text = "".join(c if " " <= c < "\x7f" else "?" for c in text)
    tag = f"{run}:{text}"
    if len(tag) > MAX_TEST_ID:
        digest = hashlib.sha256(nodeid.encode()).hexdigest()[:16]
        tag = f"{tag[: MAX_TEST_ID - 17]}#{digest}"
    return tag


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("metrics", "metrics-service collector")
    options: list[tuple[str, str, str | None]] = [
        ("url", "use the collector running at this URL instead of starting one", None),
        (
            "capacity",
            f"events the started collector keeps in memory ({DEFAULT_CAPACITY:,})",
            None,
        ),
        (
            "taxonomy",
            "tracking plan (JSON) to report coverage against at the end",
            None,
        ),
    ]
    for name, help_text, default in options:
        group.addoption(
            f"--metrics-{name}", dest=f"metrics_{name}", default=default, help=help_text
        )
        parser.addini(f"metrics_{name}", help_text, default=default)
    group.addoption(
        "--metrics-coverage-fail",
        dest="metrics_coverage_fail",
        action="store_true",
        default=None,
        help="fail the run when the tracking plan has gaps",
    )
    parser.addini(
        "metrics_coverage_fail",
        "fail the run on tracking-plan gaps",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{ALLOW_REJECTIONS}: the test passes even when the collector refused"
        " events it sent",
    )
    config.stash[_STATE] = _Plugin(config)


class _Plugin:
    """What the plugin keeps for a session: its options, run id and what was seen."""

    def __init__(self, config: pytest.Config) -> None:
        self.url = _option(config, "url")
        capacity = _option(config, "capacity")
        try:
            self.capacity = int(capacity) if capacity else DEFAULT_CAPACITY
        except ValueError:
            raise pytest.UsageError(
                f"--metrics-capacity: expected an integer, got {capacity!r}"
            ) from None
        self.plan_path = _option(config, "taxonomy", path=True)
        self.plan = _load_plan(self.plan_path) if self.plan_path else None
        flag = config.getoption("metrics_coverage_fail")
        self.coverage_fail = bool(
            flag if flag is not None else config.getini("metrics_coverage_fail")
        )
        workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
        self.worker = workerinput is not None
        # One run id for all workers, so an attached collector's events of this run
        # are those whose test_id starts with it.
        self.run = str((workerinput or {}).get("testrunuid", uuid.uuid4().hex))[:8]
        self.seen: dict[str, set[str]] = {}
        self.quarantine = True  # False once the collector answered 404 for it

    def record(self, events: Iterator[Mapping[str, Any]]) -> None:
        for event in events:
            keys = self.seen.setdefault(str(event.get("event")), set())
            metadata = event.get("metadata")
            if isinstance(metadata, dict):
                keys.update(metadata)


def _option(config: pytest.Config, name: str, path: bool = False) -> str | None:
    value = config.getoption(f"metrics_{name}")
    if value:
        return str(value)
    value = config.getini(f"metrics_{name}")
    if not value:
        return None
    # An ini value is relative to the ini file's folder, a flag to the cwd.
    return str(config.rootpath / value) if path else str(value)


def _load_plan(path: str) -> dict[str, dict[str, Any]]:
    try:
        plan = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"--metrics-taxonomy {path}: {exc}") from None
    events = plan.get("events") if isinstance(plan, dict) else None
    if not isinstance(events, dict) or not all(
        isinstance(v, dict) for v in events.values()
    ):
        raise pytest.UsageError(
            f'--metrics-taxonomy {path}: expected {{"events": {{"<name>": {{...}}}}}}'
        )
    return events


@pytest.fixture(scope="session")
def metrics_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetricsServer]:
    """This pytest process's collector (one per xdist worker), started once.

    Tests share it: use the `metrics` fixture to see only the running test's events.
    """
    state: _Plugin = request.config.stash[_STATE]
    # The collector started here inherits the environment, its tokens too.
    token = os.environ.get("METRICS_READ_TOKEN")
    ingest_token = os.environ.get("METRICS_INGEST_TOKEN")
    if state.url:
        server = MetricsServer.attach(state.url, token=token, ingest_token=ingest_token)
    else:
        path = tmp_path_factory.mktemp("metrics") / "metrics.jsonl"
        server = MetricsServer(
            path,
            args=["--capacity", str(state.capacity)],
            token=token,
            ingest_token=ingest_token,
        )
    with server:
        yield server
        if state.plan is not None:
            if server.attached:
                state.record(
                    iter(server.client.events(test_id__prefix=f"{state.run}:"))
                )
            else:
                state.record(_read_lines(server.jsonl_path))


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as lines:
        for line in lines:
            yield json.loads(line)


@pytest.fixture
def metrics(
    request: pytest.FixtureRequest, metrics_server: MetricsServer
) -> MetricsClient:
    """The session's collector as this test sees it: a MetricsClient bound to the
    test's id. Its reads and waits see only events carrying that id; its `post()`
    sends it; pytest-playwright's `context` (and so `page`) is tagged with it.

    The test fails when the collector refused a request carrying its id (unless
    marked `@pytest.mark.metrics_allow_rejections`).
    """
    state: _Plugin = request.config.stash[_STATE]
    view = metrics_server.client.view(make_test_id(request.node.nodeid, state.run))
    if "context" in request.fixturenames:
        _tag(view, request.getfixturevalue("context"))
    request.node.stash[_VIEW] = view
    return view


def _tag(view: MetricsClient, context: Any) -> None:
    add_init_script = getattr(context, "add_init_script", None)
    if inspect.iscoroutinefunction(add_init_script):
        # pytest-playwright-asyncio's: a sync fixture cannot await it, and a call
        # without await would leave the pages untagged with no word but a warning's.
        warnings.warn(ASYNC_CONTEXT, pytest.PytestWarning, stacklevel=2)
    elif add_init_script is not None:  # pytest-playwright's, not a namesake
        view.tag_context(context)


# Last, after pytest's own runs the test: a test that raised never gets here. A plain
# hook, not a wrapper, so that any pytest the plugin may be loaded by runs it.
@pytest.hookimpl(trylast=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    view = item.stash.get(_VIEW, None)
    state: _Plugin = item.config.stash[_STATE]
    if (
        view is None
        or not state.quarantine
        or item.get_closest_marker(ALLOW_REJECTIONS)
    ):
        return
    refused = view.rejections(limit=20)
    if refused is None:
        state.quarantine = False
    elif refused:
        pytest.fail(_refusals_message(view, refused), pytrace=False)


def _refusals_message(view: MetricsClient, refused: list[dict[str, Any]]) -> str:
    lines = [
        f"the collector refused {len(refused)} request(s) carrying this test's id"
        f" {view.test_id!r} (newest first; mark the test"
        f" @pytest.mark.{ALLOW_REJECTIONS} if that is expected):"
    ]
    for record in refused:
        lines += describe_refusal(record)
    return "\n".join(lines)


def pytest_sessionfinish(session: pytest.Session) -> None:
    state: _Plugin = session.config.stash[_STATE]
    if state.plan is None:
        return
    if state.worker:
        output: dict[str, Any] = session.config.workeroutput  # type: ignore[attr-defined]
        output["metrics_seen"] = {
            name: sorted(keys) for name, keys in state.seen.items()
        }
    elif state.coverage_fail and any(_gaps(state.plan, state.seen)):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist: a worker's events seen, merged into the controller's."""
    state: _Plugin = node.config.stash[_STATE]
    for name, keys in getattr(node, "workeroutput", {}).get("metrics_seen", {}).items():
        state.seen.setdefault(name, set()).update(keys)


def _gaps(
    plan: Mapping[str, Mapping[str, Any]], seen: Mapping[str, set[str]]
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Plan events never seen, events seen outside the plan, and per event the
    metadata keys outside its `required` and `schema` properties (when it has either)."""
    unseen = sorted(set(plan) - set(seen))
    unplanned = sorted(set(seen) - set(plan))
    stray: dict[str, list[str]] = {}
    for name in sorted(set(plan) & set(seen)):
        spec = plan[name]
        schema = spec.get("schema")
        if "required" not in spec and not isinstance(schema, dict):
            continue
        known = set(spec.get("required") or ())
        if isinstance(schema, dict):
            known.update(schema.get("properties") or {})
            known.update(schema.get("required") or ())
        extra = sorted(seen[name] - known)
        if extra:
            stray[name] = extra
    return unseen, unplanned, stray


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state: _Plugin = config.stash[_STATE]
    if state.plan is None or state.worker:
        return
    write = terminalreporter.write_line
    terminalreporter.section("metrics tracking plan")
    unseen, unplanned, stray = _gaps(state.plan, state.seen)
    write(
        f"{state.plan_path}: {len(state.plan)} planned event(s);"
        f" {len(state.seen)} distinct event name(s) seen"
    )
    if not (unseen or unplanned or stray):
        write("covered: every planned event seen, nothing outside the plan")
        return
    if unseen:
        write(f"planned, never seen ({len(unseen)}): {', '.join(unseen)}")
    if unplanned:
        write(f"seen, not in the plan ({len(unplanned)}): {', '.join(unplanned)}")
    for name, keys in stray.items():
        write(f"metadata keys outside {name}'s schema: {', '.join(keys)}")
    if state.coverage_fail:
        write("--metrics-coverage-fail: these gaps fail the run", red=True)
