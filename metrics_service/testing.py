"""Helpers for users' own test suites: a client and a pytest plugin.

The plugin (registered through the `pytest11` entry point) gives a `metrics_server`
fixture: a real collector in a subprocess on a free port with a temporary JSONL file.

Every pytest run in a project that installs this package loads this module, so it
imports only the standard library and pytest: httpx, orjson and the app's own modules
are imported when a client or a server is first used.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:
    import httpx

HEALTH_PATH = "/api/metrics/behavior/health"


def _query(filters: Mapping[str, Any]) -> list[tuple[str, str]]:
    # The app's own encoding of filters (lists repeat, meta.a.b=1); imported on first
    # use because it brings the app's modules with it.
    from metrics_service.read.filters import flat_params

    return flat_params(dict(filters))


class MetricsClient:
    """A client for the collector's HTTP API, made for assertions in tests.

    Filters are keyword arguments: `event="signup"` (or a list: any of),
    `visitor_id`, `event_id`, `since`/`until` (ISO string or datetime), `after`
    (a seq from `mark()`), and `meta={"plan": "pro"}` for `meta.plan=pro`.

    `token` is sent as `Authorization: Bearer <token>` on every request (the
    collector's METRICS_READ_TOKEN); `ingest_token`, when given, replaces it on
    `post()` (METRICS_INGEST_TOKEN, when the two differ).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        ingest_token: str | None = None,
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._post_headers = (
            {"Authorization": f"Bearer {ingest_token}"} if ingest_token else {}
        )
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=headers
        )

    def close(self) -> None:
        self._http.close()

    @property
    def closed(self) -> bool:
        return self._http.is_closed

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        response = self._http.get(HEALTH_PATH)
        body: dict[str, Any] = response.json()
        return body

    def post(self, event: Mapping[str, Any]) -> dict[str, Any]:
        response = self._http.post(
            "/api/metrics/event", json=dict(event), headers=self._post_headers
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def snapshot(self, *, limit: int | None = None, **filters: Any) -> dict[str, Any]:
        """The snapshot; with filters, total/by_event/last_events cover matches only."""
        params = _query(filters)
        if limit is not None:
            params.append(("limit", str(limit)))
        response = self._http.get("/api/metrics/behavior", params=tuple(params))
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def mark(self) -> int:
        """The highest seq so far: pass it as `after=` to see only what comes next."""
        seq: int = self.snapshot(limit=0)["last_seq"]
        return seq

    def events(self, **filters: Any) -> list[dict[str, Any]]:
        """Matching events in the ring, oldest first."""
        body = self.snapshot(limit=10_000_000, **filters)
        events: list[dict[str, Any]] = body["last_events"]
        return events[::-1]

    def wait_for(
        self,
        event: str | list[str] | None = None,
        count: int = 1,
        timeout: float = 5,
        *,
        exactly: bool = False,
        settle: float | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Block until `count` matching events are in the ring (oldest first).

        With `exactly=True`, then wait `settle` seconds (at most `timeout`) of quiet and
        fail if any further match arrived. Raises AssertionError listing what matched
        and what else arrived.
        """
        if event is not None:
            filters = {"event": event, **filters}
        params = [("count", str(count)), ("timeout", str(timeout))]
        if exactly:
            params.append(("exactly", "true"))
        if settle is not None:
            params.append(("settle", str(settle)))
        response = self._wait(filters, params, timeout + (settle or 0))
        if response.status_code == 408:
            raise AssertionError(self._explain(filters, count, timeout, response))
        if response.status_code == 409:
            quiet = f" and {settle:g}s of quiet" if settle else ""
            headline = (
                f"expected exactly {count} event(s) matching {_shown(filters)}"
                f" within {timeout:g}s{quiet}, got {response.json()['matched']}:"
            )
            raise AssertionError(
                self._explain(filters, count, timeout, response, headline)
            )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def expect_none(
        self,
        event: str | list[str] | None = None,
        timeout: float = 0.5,
        **filters: Any,
    ) -> None:
        """Pass when no matching event is in the ring or arrives within `timeout`.

        Raises AssertionError listing the offending events and what else arrived.
        """
        if event is not None:
            filters = {"event": event, **filters}
        params = [("absent", "true"), ("timeout", str(timeout))]
        response = self._wait(filters, params, timeout)
        if response.status_code == 409:
            headline = (
                f"expected no event matching {_shown(filters)} within {timeout:g}s,"
                f" got {response.json()['matched']}:"
            )
            raise AssertionError(self._explain(filters, 0, timeout, response, headline))
        response.raise_for_status()

    def expect_sequence(
        self,
        names: Sequence[str],
        per: str | None = None,
        timeout: float = 5,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Block until matching events named `names` arrive in that order (others may
        come between), all from one `per` value (e.g. "visitor_id") when given.

        Returns the events forming the sequence; raises AssertionError listing what
        arrived of those names and what else arrived.
        """
        params = [("sequence", ",".join(names)), ("timeout", str(timeout))]
        if per is not None:
            params.append(("per", per))
        response = self._wait(filters, params, timeout)
        if response.status_code == 408:
            grouped = f" from one {per}" if per else ""
            headline = (
                f"expected the sequence {' -> '.join(names)}{grouped} among events"
                f" matching {_shown(filters)} within {timeout:g}s, got"
                f" {response.json()['matched']} of those names:"
            )
            raise AssertionError(
                self._explain(filters, len(names), timeout, response, headline)
            )
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def _wait(
        self, filters: dict[str, Any], params: list[tuple[str, str]], seconds: float
    ) -> httpx.Response:
        return self._http.get(
            "/api/metrics/behavior/wait",
            params=tuple(_query(filters) + params),
            timeout=seconds + self._timeout,
        )

    def _explain(
        self,
        filters: dict[str, Any],
        count: int,
        timeout: float,
        response: httpx.Response,
        headline: str | None = None,
    ) -> str:
        matched: list[dict[str, Any]] = response.json()["events"]
        lines = [
            headline
            or f"expected {count} event(s) matching {_shown(filters)} within"
            f" {timeout:g}s, got {len(matched)}:"
        ]
        lines += [_describe(e) for e in matched] or ["  (none)"]
        # What else arrived in the same window (after the mark, when there is one).
        window = {"after": filters["after"]} if "after" in filters else {}
        recent = self.snapshot(limit=20, **window)
        others = [e for e in recent["last_events"] if e not in matched][::-1]
        where = f"after seq {filters['after']}" if window else "in the ring"
        lines.append(
            f"events {where}: {recent['total']} in all, by name"
            f" {_by_event(recent['by_event'])}; the newest that did not match:"
        )
        lines += [_describe(e) for e in others] or ["  (none)"]
        return "\n".join(lines)

    def reset(self) -> int:
        """Empty the ring (never the file); returns how many events were cleared.

        Global: tests running in parallel should isolate with `mark()` and `after=`.
        """
        response = self._http.delete("/api/metrics/behavior")
        response.raise_for_status()
        cleared: int = response.json()["cleared"]
        return cleared

    def timeseries(self, interval: str = "1m", **filters: Any) -> dict[str, Any]:
        params = [*_query(filters), ("interval", interval)]
        response = self._http.get(
            "/api/metrics/behavior/timeseries", params=tuple(params)
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def _shown(filters: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "no filters"


def _describe(event: Mapping[str, Any]) -> str:
    import orjson

    metadata = orjson.dumps(event.get("metadata", {})).decode()
    return (
        f"  #{event.get('seq')} {event.get('event')}"
        f" visitor={event.get('visitor_id')} at {event.get('timestamp')}"
        f" metadata={metadata}"
    )


def _by_event(counts: list[dict[str, Any]]) -> str:
    return "{" + ", ".join(f"{c['event']}: {c['count']}" for c in counts) + "}"


# The collector as a child process, quiet but for warnings.
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
        self.client = self._client()

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


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[MetricsServer]:
    """A collector on a free port with its own JSONL file, stopped after the test."""
    with MetricsServer(tmp_path / "metrics.jsonl") as server:
        yield server
