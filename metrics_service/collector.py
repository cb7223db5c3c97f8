"""MetricsServer: a collector in a subprocess (or one already running, by URL), for
tests; metrics_service.testing re-exports it. Only the standard library at import time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from metrics_service.client import HEALTH_PATH, MetricsClient

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
        """Run the collector and return once its health URL answers; RuntimeError with
        its output when it exits or stays silent for `timeout` seconds."""
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
