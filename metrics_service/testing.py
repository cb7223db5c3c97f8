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
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import pytest

from metrics_service.client import HEALTH_PATH, MetricsClient

__all__ = [
    "CLEAN_EXIT",
    "SERVE_ARGV",
    "MetricsClient",
    "MetricsServer",
    "free_port",
    "make_test_id",
]

SERVE_ARGV = [
    sys.executable,
    "-m",
    "metrics_service",
    "serve",
    "--log-level",
    "warning",
]
# How a collector ends on SIGTERM: uvicorn re-raises the signal after a clean shutdown.
CLEAN_EXIT = (0, -signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MetricsServer:
    """A collector running in a subprocess; stop() sends SIGTERM and waits.

    The plugin's `metrics_server` fixture is one of these, started once per pytest
    process; `MetricsServer.attach(url)` stands for a collector already running.

    `start()` runs `command` (by default `python -m metrics_service serve
    --log-level warning`) followed by `args`, then polls the health URL until it
    answers, failing with the process's output if it exits first. Host, port and
    JSONL path reach it as METRICS_HOST/METRICS_PORT/METRICS_JSONL
    (`settings_as="env"`, winning over `env`) or as `--host/--port/--jsonl` flags
    after `args` (`settings_as="flags"`, leaving the variables as `env` has them).

    `env` adds to this process's environment; a value of None removes a variable.
    The output (stdout and stderr) goes to `log` when given, else to a temporary
    file; `output()` reads it, and start-up failures include it. `token` and
    `ingest_token` are given to `client` (see MetricsClient): they do not configure
    the server, whose tokens come from `env`.
    """

    def __init__(
        self,
        jsonl_path: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str | None] | None = None,
        host: str = "127.0.0.1",
        args: Sequence[str] = (),
        command: Sequence[str] = tuple(SERVE_ARGV),
        settings_as: Literal["env", "flags"] = "env",
        cwd: str | os.PathLike[str] | None = None,
        log: Path | None = None,
        token: str | None = None,
        ingest_token: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.jsonl_path = jsonl_path
        self.url = f"http://{host}:{self.port}"
        self.argv = [*command, *args]
        if settings_as == "flags":
            self.argv += ["--host", host, "--port", str(self.port)]
            self.argv += ["--jsonl", str(jsonl_path)]
        self._env = dict(env or {})
        self._settings_as = settings_as
        self._cwd = cwd
        self._log_path = log
        self._log: IO[bytes] | None = None
        self._output = ""  # a temporary log's text, kept when stop() closes it
        self._tokens = (token, ingest_token)
        self.process: subprocess.Popen[bytes] | None = None
        self.attached = False
        self.client = self._client()

    @classmethod
    def attach(
        cls, url: str, *, token: str | None = None, ingest_token: str | None = None
    ) -> MetricsServer:
        """A collector already running at `url`: start() checks its health, stop()
        closes the client; `jsonl_path` is its sink as health reports it."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a collector's base URL: {url!r}")
        server = cls(
            Path(),
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            token=token,
            ingest_token=ingest_token,
        )
        server.url = url.rstrip("/")
        server.attached = True
        server.client.close()
        server.client = server._client()
        return server

    def tracker_tag(self, **options: Any) -> str:
        """`<script>` tags loading tracker.js from this collector and calling
        metrics.init with its URL (see MetricsClient.tracker_tag)."""
        return self.client.tracker_tag(**options)

    def _client(self) -> MetricsClient:
        token, ingest_token = self._tokens
        return MetricsClient(self.url, token=token, ingest_token=ingest_token)

    def environment(self) -> dict[str, str]:
        """The environment the collector runs with."""
        env = dict(os.environ)
        for name, value in self._env.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        if self._settings_as == "env":
            env.update(
                METRICS_HOST=self.host,
                METRICS_PORT=str(self.port),
                METRICS_JSONL=str(self.jsonl_path),
            )
        return env

    def start(self, timeout: float = 15.0) -> MetricsServer:
        import httpx

        if self.client.closed:  # started again after stop()
            self.client = self._client()
        if self.attached:
            return self._check_attached()
        if self._log_path is not None:
            self._log = self._log_path.open("wb")
        else:
            self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.environment(),
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self._log.close()
            raise
        health = f"{self.url}{HEALTH_PATH}"
        last = "no answer"
        deadline = time.monotonic() + timeout
        # Polling: a separate process gives nothing to wait on but its port.
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                output = self.output()
                self.stop()
                raise RuntimeError(
                    f"metrics-service exited at start-up with code {code}:\n{output}"
                )
            try:
                answer = httpx.get(health, timeout=1)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if answer.is_success:
                    return self
                last = f"{answer.status_code} {answer.text}"
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"metrics-service did not answer on {health} in {timeout:g}s"
            f" (last: {last}); its output:\n{self.output()}"
        )

    def _check_attached(self) -> MetricsServer:
        import httpx

        try:
            health = self.client.health()
        except httpx.HTTPError as exc:
            raise RuntimeError(
                f"no collector answers at {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        except ValueError:  # not JSON: something else listens there
            raise RuntimeError(f"{self.url} does not answer as a collector") from None
        if "sink_path" not in health:
            raise RuntimeError(f"{self.url}{HEALTH_PATH} answered {health}")
        self.jsonl_path = Path(health["sink_path"])
        return self

    def output(self) -> str:
        """What the collector has written to stdout and stderr so far."""
        if self._log_path is not None:
            try:
                return self._log_path.read_text(errors="replace")
            except FileNotFoundError:
                return ""
        if self._log is None or self._log.closed:
            return self._output
        self._log.flush()
        self._log.seek(0)
        data = self._log.read()
        self._log.seek(0, os.SEEK_END)
        return data.decode(errors="replace")

    def stop(
        self, timeout: float = 10.0, *, expect: Collection[int] | None = None
    ) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code.

        With `expect` (e.g. CLEAN_EXIT), an exit code not in it raises AssertionError
        showing the output.
        """
        self.client.close()
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None and not self._log.closed:
            if self._log_path is None:
                self._output = self.output()
            self._log.close()
        code = self.process.returncode
        if expect is not None and code not in expect:
            raise AssertionError(
                f"metrics-service exited with code {code}, expected one of"
                f" {sorted(expect)}; its output:\n{self.output()}"
            )
        return code

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The plugin: options, the session's collector, per-test views, coverage.

DEFAULT_CAPACITY = 100_000  # the session's events, so views find them in the ring
MAX_TEST_ID = 256  # the collector's limit (ingest/test_tag.py)
ALLOW_REJECTIONS = "metrics_allow_rejections"
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
        view.tag_context(request.getfixturevalue("context"))
    request.node.stash[_VIEW] = view
    return view


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield  # an exception from the test passes through untouched
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
        detail = json.dumps(record.get("detail"))
        lines.append(
            f"  #{record.get('id')} {record.get('status')} {record.get('path')}"
            f" event={record.get('event')} visitor={record.get('visitor_id')}: {detail}"
        )
        body = record.get("body")
        if body:
            lines.append(
                f"    body: {body if isinstance(body, str) else json.dumps(body)}"
            )
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
