"""What `metrics-service serve` prints at start-up (the URLs, with the real port) and how
it ends on Ctrl-C (SIGINT) and SIGTERM: exit 0, no traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

# What serve prints and how it stops are independent of the C-or-Python choice: make test
# runs it in its first pass only (the Python twins of the C code are not on its path).
pytestmark = pytest.mark.once


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_serve_prints_its_urls_and_stops_quietly(tmp_path: Path, stop: int) -> None:
    env = {
        **os.environ,
        "METRICS_PORT": "0",
        "METRICS_JSONL": str(tmp_path / "m.jsonl"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "metrics_service", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # SIGINT as Ctrl-C sends it, to the whole group
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 15
    dashboard = None
    try:
        while time.monotonic() < deadline and dashboard is None:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            found = re.search(r"dashboard\s+(http://127\.0\.0\.1:(\d+)/)", line)
            if found:
                dashboard = found.group(1)
        assert dashboard is not None, "".join(lines)
        assert not dashboard.endswith(":0/")
        assert httpx.get(f"{dashboard}api/metrics/behavior/health").status_code == 200
        for _ in range(3):  # the rest of the announcement
            lines.append(proc.stdout.readline())
        text = "".join(lines)
        assert f"{dashboard}openapi.json" in text
        assert f"{dashboard}api/metrics/event" in text
    finally:
        os.killpg(proc.pid, stop)
        rest, _ = proc.communicate(timeout=20)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert "metrics-service: stopped" in output
