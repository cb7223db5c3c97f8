"""Slow clients against a real server on loopback: a deadline for request headers and
a cap on open connections (http/connections.py GuardedHttp)."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from metrics_service.http.connections import (
    HEADER_TIMEOUT,
    RESERVED_FILES,
    GuardedHttp,
    headers_too_slow,
)
from metrics_service.testing import SERVE_ARGV, MetricsServer

# Connection handling is independent of the C-or-Python choice: make test
# runs it in its first pass only (the Python twins of the C code are not on its path).
pytestmark = pytest.mark.once

FILES = 256  # the server's open-file limit: its cap is FILES - RESERVED_FILES
SLOW_CLIENTS = 300
PARTIAL = b"POST /api/metrics/event HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


def limited(files: int, header_timeout: float = HEADER_TIMEOUT) -> list[str]:
    """The serve command, run with an open-file limit of `files` (and a shorter
    deadline for headers, so a test of it need not wait the default)."""
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({files}, {files})); "
        "from metrics_service.http.connections import GuardedHttp; "
        f"GuardedHttp.header_timeout = {header_timeout!r}; "
        f"sys.argv = {['metrics_service', *SERVE_ARGV[3:]]!r}; "
        "runpy.run_module('metrics_service', run_name='__main__')"
    )
    return [sys.executable, "-c", code]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MetricsServer]:
    with MetricsServer(tmp_path / "m.jsonl", command=limited(FILES)) as running:
        yield running


def open_slow(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send part of their headers and then nothing."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(PARTIAL)
        socks.append(sock)
    return socks


def closed_by_server(sock: socket.socket) -> bytes | None:
    """What the server sent before closing, or None while it keeps the socket open."""
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except BlockingIOError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_connections_that_never_finish_their_headers_lock_nobody_out(
    server: MetricsServer,
) -> None:
    socks = open_slow(server.port, SLOW_CLIENTS)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        r = httpx.post(
            f"{server.url}/api/metrics/event",
            json={"visitor_id": "visitor-123", "event": "page_view"},
            timeout=5,
        )
        assert r.status_code == 202
        assert time.monotonic() - started < 2
        # The oldest idle connections made room, with a 503 since a request was on
        # its way; the server kept within its cap.
        answers = [closed_by_server(sock) for sock in socks]
        shed = [a for a in answers if a is not None]
        assert len(shed) >= SLOW_CLIENTS - (FILES - RESERVED_FILES)
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in shed if a)
        assert answers[0] is not None and answers[-1] is None  # oldest first
    finally:
        for sock in socks:
            sock.close()
    r = httpx.get(f"{server.url}/api/metrics/behavior", timeout=5)
    assert r.status_code == 200
    assert r.json()["total"] == 1


SHORT_DEADLINE = 2.0


def test_headers_that_take_too_long_get_408_and_the_connection_is_closed(
    tmp_path: Path,
) -> None:
    command = limited(FILES, header_timeout=SHORT_DEADLINE)
    with MetricsServer(tmp_path / "m.jsonl", command=command) as server:
        [sock] = open_slow(server.port, 1)
        with sock:
            sock.settimeout(SHORT_DEADLINE + 3)
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert answer.endswith(
        b'{"detail":"the request headers did not arrive within 2 seconds"}'
    )
    # The sweep runs once a second.
    assert SHORT_DEADLINE - 0.5 <= waited <= SHORT_DEADLINE + 2


def test_the_default_deadline_for_headers_is_ten_seconds() -> None:
    assert GuardedHttp.header_timeout == HEADER_TIMEOUT == 10.0
    assert headers_too_slow(HEADER_TIMEOUT).endswith(
        b'{"detail":"the request headers did not arrive within 10 seconds"}'
    )


def test_a_client_that_sends_its_headers_in_time_is_served(
    server: MetricsServer,
) -> None:
    body = b'{"visitor_id":"visitor-123","event":"page_view"}'
    [sock] = open_slow(server.port, 1)
    with sock:
        sock.settimeout(5)
        time.sleep(1.5)  # at least one sweep passes
        sock.sendall(
            b"1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 202 ")
