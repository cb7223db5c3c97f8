from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from metrics_service.read.filters import Filters
from metrics_service.read.hub import Hub
from metrics_service.read.rejected import RejectionFilters
from metrics_service.read.stream import events as sse_events
from metrics_service.store.chunk import Entry
from metrics_service.store.quarantine import Quarantine, Request
from metrics_service.store.ring import Ring
from metrics_service.testing import MetricsServer

STREAM = "/api/metrics/behavior/stream"


def post(http: httpx.Client, name: str, **extra: Any) -> int:
    response = http.post(
        "/api/metrics/event", json={"event": name, "visitor_id": "visitor-1", **extra}
    )
    assert response.status_code == 202, response.text
    seq: int = response.json()["seq"]
    return seq


def messages(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """SSE messages (and comments, as {"comment": ...}) from a line iterator."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def next_events(stream: Iterator[dict[str, str]], n: int) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for message in stream:
        if "comment" not in message and "retry" not in message:
            out.append(message)
            if len(out) == n:
                break
    return out


def connected(stream: Iterator[dict[str, str]]) -> None:
    for message in stream:
        if message.get("comment") == "connected":
            return
    raise AssertionError("stream ended before it was connected")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    """One server for the tests that read only what they posted (after their own seqs)."""
    with MetricsServer(tmp_path_factory.mktemp("stream") / "m.jsonl") as running:
        yield running


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[MetricsServer]:
    with MetricsServer(tmp_path / "m.jsonl") as running:
        yield running


def test_live_events_then_resume_with_last_event_id(server: MetricsServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as http:
        with http.stream("GET", STREAM) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            stream = messages(response.iter_lines())
            connected(stream)
            first = [post(http, "page_view", metadata={"i": i}) for i in range(3)]
            got = next_events(stream, 3)
        assert [m["id"] for m in got] == [str(s) for s in first]
        assert {m["event"] for m in got} == {"behavior"}
        stored = [orjson.loads(m["data"]) for m in got]
        assert [e["metadata"] for e in stored] == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert stored[0]["seq"] == first[0]

        # The client saw up to first[0]; it reconnects and gets the rest, then live.
        headers = {"Last-Event-ID": str(first[0])}
        with http.stream("GET", STREAM, headers=headers) as response:
            assert response.status_code == 200
            stream = messages(response.iter_lines())
            connected(stream)
            later = post(http, "page_view")
            got = next_events(stream, 3)
        assert [int(m["id"]) for m in got] == [first[1], first[2], later]


def test_after_param_and_filters_apply(server: MetricsServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as http:
        mark = post(http, "page_view")
        post(http, "signup", metadata={"plan": "free"})
        post(http, "signup", metadata={"plan": "pro"})
        params = {"after": str(mark), "event": "signup", "meta.plan": "pro"}
        with http.stream("GET", STREAM, params=params) as response:
            stream = messages(response.iter_lines())
            connected(stream)
            post(http, "signup", metadata={"plan": "free"})
            live = post(http, "signup", metadata={"plan": "pro"})
            got = next_events(stream, 2)
        assert [int(m["id"]) for m in got] == [mark + 2, live]


def test_last_event_id_wins_over_the_urls_after(server: MetricsServer) -> None:
    # A browser's EventSource reconnects to its original URL, ?after= included.
    with httpx.Client(base_url=server.url, timeout=20) as http:
        seqs = [post(http, "page_view") for _ in range(4)]
        headers = {"Last-Event-ID": str(seqs[2])}
        params = {"after": str(seqs[0])}
        with http.stream("GET", STREAM, params=params, headers=headers) as response:
            stream = messages(response.iter_lines())
            connected(stream)
            got = next_events(stream, 1)
        assert [int(m["id"]) for m in got] == [seqs[3]]


def test_bad_stream_params_are_422(server: MetricsServer) -> None:
    with httpx.Client(base_url=server.url, timeout=20) as http:
        response = http.get(STREAM, params={"evnt": "x"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["query", "evnt"]
        response = http.get(STREAM, headers={"Last-Event-ID": "abc"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["header", "last-event-id"]


def _read_until(sock: socket.socket, marker: bytes, deadline: float) -> bytes:
    data = b""
    while marker not in data:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        assert time.monotonic() < deadline, f"no {marker!r} in time"
    return data


def _ingest(url: str, n: int, batch: int = 250) -> list[int]:
    # 1.5 KB per event: 10,000 of them outgrow every socket buffer on the way (~6 MB).
    pad = "x" * 1500
    statuses: list[int] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for first in range(0, n, batch):
            events = [
                {
                    "event": "load",
                    "visitor_id": "visitor-1",
                    "metadata": {"i": i, "pad": pad},
                }
                for i in range(first, min(n, first + batch))
            ]
            response = http.post("/api/metrics/events", json=events)
            statuses.append(response.status_code)
    return statuses


@pytest.mark.slow
def test_stalled_client_gets_reset_and_ingestion_goes_on(tmp_path: Path) -> None:
    env = {"METRICS_RING_CAPACITY": "20000"}
    with MetricsServer(tmp_path / "m.jsonl", env=env) as server:
        sock = socket.socket()
        # A tiny receive window so the server's socket fills up quickly.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((server.host, server.port))
        with contextlib.closing(sock):
            sock.sendall(
                f"GET {STREAM} HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode()
            )
            head = _read_until(sock, b": connected", time.monotonic() + 20)
            assert head.startswith(b"HTTP/1.1 200")

            # The client now reads nothing while 10,000 events arrive.
            started = time.perf_counter()
            statuses = _ingest(server.url, 10_000)
            elapsed = time.perf_counter() - started
            print(
                f"\n10,000 events with a stalled stream client: {10_000 / elapsed:.0f}/s"
            )
            assert statuses == [202] * 40
            snapshot = server.client.snapshot(limit=0)
            assert snapshot["total"] == 10_000
            assert len((tmp_path / "m.jsonl").read_bytes().splitlines()) == 10_000

            # Reading again drains what was queued, then the reset ends the stream
            # (with a wider window now: the stall has done its part).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            body = _read_until(sock, b"event: reset", time.monotonic() + 60)
        ids = [int(line[4:]) for line in body.splitlines() if line.startswith(b"id: ")]
        assert ids == list(range(1, len(ids) + 1))
        assert len(ids) < 10_000
        reset = body[body.index(b"event: reset") :]
        data = orjson.loads(reset.split(b"data: ", 1)[1].split(b"\n", 1)[0])
        if ids:
            assert data["last_seq"] == ids[-1]

        # Reconnecting with Last-Event-ID picks up exactly where it stopped.
        last = ids[-1] if ids else 0
        with (
            httpx.Client(base_url=server.url, timeout=30) as http,
            http.stream(
                "GET", STREAM, headers={"Last-Event-ID": str(last)}
            ) as response,
        ):
            got = next_events(messages(response.iter_lines()), 10_000 - last)
        assert [int(m["id"]) for m in got] == list(range(last + 1, 10_001))


def test_server_stops_promptly_with_open_stream(tmp_path: Path) -> None:
    server = MetricsServer(tmp_path / "m.jsonl").start()
    try:
        with (
            httpx.Client(base_url=server.url, timeout=30) as http,
            http.stream("GET", STREAM) as response,
        ):
            stream = messages(response.iter_lines())
            connected(stream)
            started = time.monotonic()
            assert server.process is not None
            server.process.terminate()
            rest = list(stream)  # the server ends the response instead of hanging
        code = server.process.wait(30)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
    assert code in (0, -signal.SIGTERM)
    assert not [m for m in rest if "event" in m]
    # uvicorn would cut a hanging stream only after its 10 s graceful timeout.
    assert elapsed < 8


class FakeCollector:
    def __init__(self) -> None:
        self.listeners: list[Any] = []

    def subscribe(self, listener: Any) -> Any:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)


def test_heartbeat_comment_when_idle() -> None:
    async def run() -> list[bytes]:
        collector = FakeCollector()
        hub = Hub(collector)  # type: ignore[arg-type]
        body = sse_events(hub, Ring(10), Filters(), heartbeat=0.05)
        chunks = [await body.__anext__() for _ in range(3)]
        for listener in collector.listeners:
            listener([Entry(1, 0.0, "x", "visitor-1", None, b'{"seq":1}')])
        chunks.append(await body.__anext__())
        hub.close()
        chunks.extend([chunk async for chunk in body])
        return chunks

    chunks = asyncio.run(run())
    assert chunks[0].startswith(b"retry: 1000\n: connected")
    assert chunks[1] == chunks[2] == b": heartbeat\n\n"
    assert chunks[3] == b'id: 1\nevent: behavior\ndata: {"seq":1}\n\n'
    assert chunks[4:] == []


def test_refusals_arrive_as_rejected_messages_unless_opted_out(
    fresh_server: MetricsServer,
) -> None:
    # A fresh server: the refusal's id in the quarantine is known (2).
    with httpx.Client(base_url=fresh_server.url, timeout=20) as http:
        refused = {"event": "signup", "visitor_id": "visitor-1", "plan": "pro"}
        with http.stream("GET", STREAM, params={"event": "signup"}) as response:
            stream = messages(response.iter_lines())
            connected(stream)
            bad = http.post("/api/metrics/event", json={**refused, "event": "other"})
            assert bad.status_code == 422
            answer = http.post("/api/metrics/event", json=refused)
            assert answer.status_code == 422
            seq = post(http, "signup")
            got = next_events(stream, 2)
        assert [m["event"] for m in got] == ["rejected", "behavior"]
        assert "id" not in got[0] and got[1]["id"] == str(seq)
        record = orjson.loads(got[0]["data"])
        assert (record["event"], record["id"]) == ("signup", 2)
        assert record["detail"] == answer.json()["detail"]
        params = {"event": "signup", "rejected": "false"}
        with http.stream("GET", STREAM, params=params) as response:
            stream = messages(response.iter_lines())
            connected(stream)
            assert http.post("/api/metrics/event", json=refused).status_code == 422
            seq = post(http, "signup")
            [only] = next_events(stream, 1)
        assert (only["event"], only["id"]) == ("behavior", str(seq))


def test_refusals_and_events_are_sent_in_the_order_they_came() -> None:
    # Both queue while the stream is busy sending (or not yet woken): it sends them in
    # the order they came, not all refusals first.
    async def run() -> list[str]:
        collector = FakeCollector()
        quarantine = Quarantine(10, None)
        hub = Hub(collector, quarantine=quarantine)  # type: ignore[arg-type]
        body = sse_events(hub, Ring(10), Filters(), rejections=RejectionFilters())
        await body.__anext__()  # connected: subscribed
        order: list[str] = []
        for seq in (1, 2):
            quarantine.record(Request("/p", 422, f"r{seq}", [], None, None))
            for listener in collector.listeners:
                listener([Entry(seq, 0.0, "x", "v", None, b'{"seq":%d}' % seq)])
        quarantine.record(Request("/p", 422, "r3", [], None, None))
        while len(order) < 5:
            chunk = await body.__anext__()
            for message in chunk.split(b"\n\n")[:-1]:
                data = orjson.loads(message.split(b"data: ")[1])
                order.append(data["detail"] if "detail" in data else f"e{data['seq']}")
        hub.close()
        await body.aclose()
        return order

    assert asyncio.run(run()) == ["r1", "e1", "r2", "e2", "r3"]
