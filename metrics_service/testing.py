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
from typing import IO, TYPE_CHECKING, Literal

import pytest

from metrics_service.client import HEALTH_PATH, MetricsClient

if TYPE_CHECKING:
    pass

__all__ = ["CLEAN_EXIT", "SERVE_ARGV", "MetricsClient", "MetricsServer", "free_port"]

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
