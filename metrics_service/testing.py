"""Helpers for users' own test suites: a client and a pytest plugin.

The plugin (registered through the `pytest11` entry point) gives a `metrics_server`
fixture: a real collector in a subprocess on a free port with a temporary JSONL file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from metrics_service.read.filters import flat_params


class MetricsClient:
    """A client for the collector's HTTP API, made for assertions in tests.

    Filters are keyword arguments: `event="signup"` (or a list: any of),
    `visitor_id`, `event_id`, `since`/`until` (ISO string or datetime), `after`
    (a seq from `mark()`), and `meta={"plan": "pro"}` for `meta.plan=pro`.
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MetricsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self) -> dict[str, Any]:
        response = self._http.get("/api/metrics/behavior/health")
        body: dict[str, Any] = response.json()
        return body

    def post(self, event: Mapping[str, Any]) -> dict[str, Any]:
        response = self._http.post("/api/metrics/event", json=dict(event))
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def snapshot(self, *, limit: int | None = None, **filters: Any) -> dict[str, Any]:
        """The snapshot; with filters, total/by_event/last_events cover matches only."""
        params = flat_params(filters)
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
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Block until `count` matching events are in the ring (oldest first).

        Raises AssertionError listing what matched and what else arrived on timeout.
        """
        if event is not None:
            filters = {"event": event, **filters}
        params = flat_params(filters)
        params += [("count", str(count)), ("timeout", str(timeout))]
        response = self._http.get(
            "/api/metrics/behavior/wait",
            params=tuple(params),
            timeout=timeout + self._timeout,
        )
        if response.status_code == 408:
            raise AssertionError(self._explain(filters, count, timeout, response))
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def _explain(
        self,
        filters: dict[str, Any],
        count: int,
        timeout: float,
        response: httpx.Response,
    ) -> str:
        matched: list[dict[str, Any]] = response.json()["events"]
        shown = ", ".join(f"{k}={v!r}" for k, v in filters.items()) or "no filters"
        lines = [
            f"expected {count} event(s) matching {shown} within {timeout:g}s,"
            f" got {len(matched)}:"
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
        params = [*flat_params(filters), ("interval", interval)]
        response = self._http.get(
            "/api/metrics/behavior/timeseries", params=tuple(params)
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def _describe(event: Mapping[str, Any]) -> str:
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MetricsServer:
    """A collector running in a subprocess; stop() sends SIGTERM and waits."""

    def __init__(
        self,
        jsonl_path: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.jsonl_path = jsonl_path
        self.url = f"http://{host}:{self.port}"
        self._env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.client = MetricsClient(self.url)

    def start(self, timeout: float = 15.0) -> MetricsServer:
        env = {**os.environ, **self._env}
        env.update(
            METRICS_HOST=self.host,
            METRICS_PORT=str(self.port),
            METRICS_JSONL=str(self.jsonl_path),
        )
        self.process = subprocess.Popen(
            SERVE_ARGV,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = (
                    self.process.stdout.read().decode() if self.process.stdout else ""
                )
                raise RuntimeError(f"metrics-service exited at start-up:\n{output}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(
                    f"{self.url}/api/metrics/behavior/health", timeout=1
                ).is_success:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"metrics-service did not answer on {self.url} in {timeout}s"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
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
        if self.process.stdout:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[MetricsServer]:
    """A collector on a free port with its own JSONL file, stopped after the test."""
    with MetricsServer(tmp_path / "metrics.jsonl") as server:
        yield server
