"""Servers pinned to one core, wrk pinned to the other, and small HTTP helpers."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
WRK_LUA = Path(__file__).with_name("wrk.lua")
HOST = "127.0.0.1"
SERVER_CPU = "0"
CLIENT_CPU = "1"
HEALTH = "/api/metrics/behavior/health"
# The ceiling runs stock uvicorn with httptools, uvloop and no access log. The service is
# `python -m metrics_service serve` run in its source tree, which picks its own uvicorn
# options: nothing here imports metrics_service, so a tree with another module layout
# (an older commit, say) is served as it was.
CEILING_ARGV = [
    sys.executable, "-m", "uvicorn", "tests.perf.ceiling:app",
    "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
]  # fmt: skip
SERVICE_ARGV = [sys.executable, "-m", "metrics_service", "serve", "--log-level", "warning"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def child_env(tree: Path) -> dict[str, str]:
    """A server's environment: no METRICS_ settings of ours, `tree` first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICS_")}
    paths = [str(tree), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def package_dir(tree: Path) -> Path:
    """The folder of the metrics_service package a server started in `tree` imports."""
    tree = Path(tree).resolve()
    code = "import metrics_service; print(metrics_service.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        env=child_env(tree),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip()).resolve().parent


class Server:
    """One server process on SERVER_CPU; start() returns seconds until health answered 200."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        env: Mapping[str, str] = {},
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        # `python -m` serves the metrics_service package of this tree: the child runs in it
        # with it first on PYTHONPATH, ahead of the editable install of ROOT.
        self.cwd = Path(cwd).resolve()
        self.port = free_port()
        self.argv = argv
        self.extra_env = dict(env)
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def service(
        cls, name: str, workdir: Path, jsonl: Path, cwd: Path = ROOT, **env: str
    ) -> Server:
        values = {
            "METRICS_JSONL": str(jsonl),
            **{f"METRICS_{k.upper()}": v for k, v in env.items()},
        }
        return cls(name, SERVICE_ARGV, workdir, values, cwd)

    @classmethod
    def ceiling(cls, workdir: Path) -> Server:
        return cls("ceiling", CEILING_ARGV, workdir)

    def start(self, timeout: float = 300, ring_size: int = 0) -> float:
        env = child_env(self.cwd)
        env.update(self.extra_env, METRICS_HOST=HOST, METRICS_PORT=str(self.port))
        argv = ["taskset", "-c", SERVER_CPU, *self.argv]
        if self.argv is CEILING_ARGV:
            argv += ["--host", HOST, "--port", str(self.port)]
        began = time.perf_counter()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                argv, env=env, cwd=self.cwd, stdout=log, stderr=log
            )
        deadline = began + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited: {self.log.read_text()[-2000:]}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, body = request(self.port, "GET", HEALTH, timeout=5)
                if status == 200 and json.loads(body).get("ring_size", 0) >= ring_size:
                    return time.perf_counter() - began
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"{self.name} did not become healthy in {timeout}s")

    def cpu_seconds(self) -> float:
        """User and system CPU time the process (all its threads) has used so far."""
        assert self.process is not None
        stat = Path(f"/proc/{self.process.pid}/stat").read_text()
        # After "pid (comm)": fields[0] is the state, [11] utime, [12] stime (in ticks).
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{path}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    raw: dict[str, Any]


def wrk(
    url: str,
    *,
    connections: int,
    seconds: float,
    template: Path | None = None,
    batch: int = 0,
) -> WrkResult:
    env = dict(os.environ)
    env["BENCH_RUN"] = uuid.uuid4().hex[:8]
    env["BENCH_BATCH"] = str(batch)
    env["BENCH_TEMPLATE"] = str(template) if template else ""
    argv = [
        "taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}",
        f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(WRK_LUA), url,
    ]  # fmt: skip
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    line = next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{"))
    raw = json.loads(line)
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        rps=raw["requests"] / (raw["duration_us"] / 1e6),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=errors,
        raw=raw,
    )
