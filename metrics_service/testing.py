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
import pytest


class MetricsClient:
    """A thin client for the collector's HTTP API."""

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
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
            [
                sys.executable,
                "-m",
                "metrics_service",
                "serve",
                "--log-level",
                "warning",
            ],
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
