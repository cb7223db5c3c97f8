from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import EVENT_URL, HEALTH_URL, SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.testing import MetricsServer

MiB = 1024 * 1024
KEYS = [
    "seq",
    "received_at",
    "timestamp",
    "event",
    "visitor_id",
    "metadata",
    "user_agent",
]


def stored(config: Config) -> list[dict[str, Any]]:
    return read_lines(config.jsonl)


def detail_locs(response: httpx.Response) -> list[list[Any]]:
    return [item["loc"] for item in response.json()["detail"]]


def parse_z(value: str) -> dt.datetime:
    assert value.endswith("Z")
    return dt.datetime.fromisoformat(value[:-1]).replace(tzinfo=dt.UTC)


# --- 202 and the stored line -------------------------------------------------


def test_ingest_202(client: TestClient, config: Config) -> None:
    r = client.post(EVENT_URL, json=event(metadata={"path": "/"}))
    assert r.status_code == 202
    body = r.json()
    assert body["ok"] is True
    assert body["stored"] == 1
    assert body["file"] == str(config.jsonl)
    assert body["seq"] == 1
    assert client.post(EVENT_URL, json=event()).json()["seq"] == 2


def test_read_after_write(client: TestClient, config: Config) -> None:
    for i in range(5):
        r = client.post(EVENT_URL, json=event(f"e{i}"))
        assert r.status_code == 202
        # Acknowledged means in the ring and in the file, with no waiting.
        assert client.get(SNAPSHOT_URL).json()["last_events"][0]["seq"] == i + 1
        assert stored(config)[-1]["seq"] == i + 1


def test_stored_line_key_order_and_values(client: TestClient, config: Config) -> None:
    before = dt.datetime.now(dt.UTC)
    r = client.post(
        EVENT_URL,
        json=event(metadata={"plan": "pro", "n": [1, 2]}),
        headers={"user-agent": "agent/1.0"},
    )
    assert r.status_code == 202
    [line] = stored(config)
    assert list(line) == KEYS
    assert line["seq"] == 1
    assert line["event"] == "page_view"
    assert line["visitor_id"] == "visitor-123"
    assert line["metadata"] == {"plan": "pro", "n": [1, 2]}
    assert line["user_agent"] == "agent/1.0"
    received = parse_z(line["received_at"])
    assert before - dt.timedelta(seconds=1) <= received <= dt.datetime.now(dt.UTC)
    assert line["timestamp"] == line["received_at"]  # default: the receive time


def test_event_id_key_only_when_given(client: TestClient, config: Config) -> None:
    client.post(EVENT_URL, json=event(event_id="abc-1"))
    client.post(EVENT_URL, json=event())
    first, second = stored(config)
    assert list(first) == [*KEYS[:5], "event_id", *KEYS[5:]]
    assert first["event_id"] == "abc-1"
    assert "event_id" not in second


def test_timestamps_are_utc_with_z(client: TestClient, config: Config) -> None:
    cases = {
        "2026-03-01T12:00:00": "2026-03-01T12:00:00.000Z",  # naive means UTC
        "2026-03-01T12:00:00+02:00": "2026-03-01T10:00:00.000Z",
        "2026-03-01T12:00:00.5Z": "2026-03-01T12:00:00.500Z",
        "2026-03-01T00:30:00-01:00": "2026-03-01T01:30:00.000Z",
    }
    for sent in cases:
        assert client.post(EVENT_URL, json=event(timestamp=sent)).status_code == 202
    assert [line["timestamp"] for line in stored(config)] == list(cases.values())
    for line in stored(config):
        assert line["received_at"].endswith("Z")


def test_non_ascii_stays_utf8_in_the_file(client: TestClient, config: Config) -> None:
    body = event(
        "café_view", metadata={"title": "Grüße 日本 🎉"}, visitor_id="visitör-ü"
    )
    r = client.post(EVENT_URL, json=body)
    assert r.status_code == 202
    raw = config.jsonl.read_bytes()
    assert "Grüße 日本 🎉".encode() in raw
    assert "café_view".encode() in raw
    assert b"\\u" not in raw
    [line] = stored(config)
    assert line["visitor_id"] == "visitör-ü"
    assert line["metadata"]["title"] == "Grüße 日本 🎉"


def test_user_agent_from_header_when_absent(client: TestClient, config: Config) -> None:
    headers = {"user-agent": "Mozilla/5.0 test"}
    client.post(EVENT_URL, json=event(), headers=headers)
    client.post(EVENT_URL, json=event(user_agent=None), headers=headers)
    client.post(EVENT_URL, json=event(user_agent="own/2"), headers=headers)
    agents = [line["user_agent"] for line in stored(config)]
    assert agents == ["Mozilla/5.0 test", None, "own/2"]
    assert b'"user_agent":null' in config.jsonl.read_bytes()


def test_strings_are_stripped(client: TestClient, config: Config) -> None:
    r = client.post(EVENT_URL, json={"visitor_id": "  visitor-1  ", "event": " click "})
    assert r.status_code == 202
    [line] = stored(config)
    assert (line["visitor_id"], line["event"]) == ("visitor-1", "click")


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_accepted_content_types(
    client: TestClient, config: Config, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    r = client.post(EVENT_URL, content=orjson.dumps(event()), headers=headers)
    assert r.status_code == 202
    assert len(stored(config)) == 1


def test_content_type_with_charset(client: TestClient) -> None:
    headers = {"content-type": "text/plain;charset=UTF-8"}  # what sendBeacon sends
    r = client.post(EVENT_URL, content=orjson.dumps(event()), headers=headers)
    assert r.status_code == 202


# --- 400, 415, 422, 413: nothing written ------------------------------------


@pytest.fixture
def nothing_written(client: TestClient, config: Config) -> Iterator[None]:
    yield
    assert not config.jsonl.exists() or config.jsonl.read_bytes() == b""
    assert client.get(SNAPSHOT_URL).json()["total"] == 0


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize(
    "body",
    [b'{"visitor_id": "visitor-1", "event": ', b"{'a': 1}", b"", b"  \n", b"nul"],
)
def test_malformed_json_400(client: TestClient, body: bytes) -> None:
    r = client.post(
        EVENT_URL, content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "malformed JSON" in r.json()["detail"]


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize(
    "body", [b'{"visitor_id": "visitor-1", "event": "\xff"}', b"\xfe\xff{}", b'"\xc3"']
)
def test_invalid_utf8_400(client: TestClient, body: bytes) -> None:
    r = client.post(
        EVENT_URL, content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert "UTF-8" in r.json()["detail"]


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[]", "array"),
        (b'"page_view"', "string"),
        (b"42", "number"),
        (b"null", "null"),
    ],
)
def test_non_object_422(client: TestClient, body: bytes, kind: str) -> None:
    r = client.post(EVENT_URL, content=body)
    assert r.status_code == 422
    assert "expected a JSON object" in r.json()["detail"]
    assert kind in r.json()["detail"]


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"event": "page_view"}, ["visitor_id"]),
        ({"visitor_id": "visitor-1"}, ["event"]),
        (event(visitor_id="short"), ["visitor_id"]),
        (event(visitor_id="   abcde   "), ["visitor_id"]),  # 5 once stripped
        (event(visitor_id="v" * 65), ["visitor_id"]),
        (event(visitor_id=123456), ["visitor_id"]),
        (event(""), ["event"]),
        (event("   "), ["event"]),
        (event("e" * 65), ["event"]),
        (event("page\nview"), ["event"]),
        (event("nul\x00"), ["event"]),
        (event("del\x7f"), ["event"]),
        (event(timestamp="yesterday"), ["timestamp"]),
        (event(timestamp="2026-13-01T00:00:00Z"), ["timestamp"]),
        (event(timestamp=1700000000), ["timestamp"]),
        (event(timestamp="1700000000"), ["timestamp"]),  # not a Unix time either
        (event(timestamp="2026"), ["timestamp"]),
        (event(timestamp="9999-12-31T23:59:59-01:00"), ["timestamp"]),
        (event(metadata=[1, 2]), ["metadata"]),
        (event(metadata="x"), ["metadata"]),
        (event(user_agent=5), ["user_agent"]),
        (event(event_id=""), ["event_id"]),
        (event(event_id="i" * 101), ["event_id"]),
    ],
)
def test_field_errors_422(
    client: TestClient, body: dict[str, Any], loc: list[str]
) -> None:
    r = client.post(EVENT_URL, json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [item["loc"] for item in detail] == [loc]
    assert all(isinstance(item["msg"], str) and item["msg"] for item in detail)


@pytest.mark.usefixtures("nothing_written")
def test_unknown_top_level_field_is_named(client: TestClient) -> None:
    r = client.post(EVENT_URL, json=event(page="/home", referrer="x"))
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert sorted(item["loc"] for item in detail) == [["page"], ["referrer"]]
    for item in detail:
        assert repr(item["loc"][0]) in item["msg"]
        assert "metadata" in item["msg"]


@pytest.mark.usefixtures("nothing_written")
def test_several_errors_reported_together(client: TestClient) -> None:
    r = client.post(EVENT_URL, json={"visitor_id": "x", "event": ""})
    assert r.status_code == 422
    assert sorted(detail_locs(r)) == [["event"], ["visitor_id"]]


@pytest.mark.usefixtures("nothing_written")
@pytest.mark.parametrize(
    "content_type", ["application/xml", "multipart/form-data; boundary=x", "image/png"]
)
def test_unsupported_content_type_415(client: TestClient, content_type: str) -> None:
    r = client.post(
        EVENT_URL, content=orjson.dumps(event()), headers={"content-type": content_type}
    )
    assert r.status_code == 415
    assert content_type.split(";")[0] in r.json()["detail"]


@pytest.mark.usefixtures("nothing_written")
def test_413_by_content_length(client: TestClient) -> None:
    body = orjson.dumps(event(metadata={"pad": "x" * MiB}))
    r = client.post(EVENT_URL, content=body)
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "1,048,576" in detail
    assert f"{len(body):,}" in detail


@pytest.mark.usefixtures("nothing_written")
def test_413_while_streaming_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"visitor_id": "visitor-1", "event": "e", "metadata": {"pad": "'
        for _ in range(20):
            yield b"x" * (64 * 1024)
        yield b'"}}'

    r = client.post(EVENT_URL, content=chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert "1,048,576" in r.json()["detail"]


def test_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    # The per-event limit is lifted so that only the body limit is in play.
    config = Config(jsonl=tmp_path / "m.jsonl", max_event_bytes=2 * MiB)
    head = orjson.dumps(event(metadata={"pad": ""}))
    body = head.replace(b'"pad":""', b'"pad":"' + b"x" * (MiB - len(head)) + b'"')
    assert len(body) == MiB
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, content=body).status_code == 202
        r = c.post(EVENT_URL, content=body + b" ")
        assert r.status_code == 413
    assert len(stored(config)) == 1


def test_413_stops_reading_the_stream(config: Config) -> None:
    """The excess is never read: the app answers once it has seen more than the limit."""
    app = create_app(config)
    chunk = b"x" * (64 * 1024)
    sent = 0
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        sent += len(chunk)
        assert sent < 100 * MiB, "the app kept reading"
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": EVENT_URL,
        "raw_path": EVENT_URL.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8001),
    }

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app(scope, receive, send), timeout=30)

    asyncio.run(run())
    assert messages[0]["status"] == 413
    assert sent <= MiB + len(chunk)
    assert not config.jsonl.read_bytes()


# --- snapshot, health, reset, 404 --------------------------------------------


def post_names(client: TestClient, *names: str) -> None:
    for name in names:
        assert client.post(EVENT_URL, json=event(name)).status_code == 202


def test_snapshot_shape(client: TestClient, config: Config) -> None:
    post_names(client, "page_view", "link_click", "page_view")
    r = client.get(SNAPSHOT_URL)
    assert r.status_code == 200
    snap = r.json()
    assert list(snap) == [
        "total",
        "by_event",
        "last_events",
        "file_size_bytes",
        "capacity",
        "evicted",
        "last_seq",
        "rejected",
    ]
    assert snap["total"] == 3
    assert snap["by_event"] == [
        {"event": "page_view", "count": 2},
        {"event": "link_click", "count": 1},
    ]
    assert [e["seq"] for e in snap["last_events"]] == [3, 2, 1]
    # Each entry is exactly the stored object, key order included.
    assert snap["last_events"] == stored(config)[::-1]
    assert [list(e) for e in snap["last_events"]] == [KEYS] * 3
    assert snap["file_size_bytes"] == config.jsonl.stat().st_size
    assert snap["capacity"] == 500
    assert snap["evicted"] == 0
    assert snap["last_seq"] == 3


def test_empty_snapshot(client: TestClient) -> None:
    r = client.get(SNAPSHOT_URL)
    assert r.status_code == 200
    snap = r.json()
    assert (snap["total"], snap["by_event"], snap["last_events"]) == (0, [], [])
    assert (snap["evicted"], snap["last_seq"], snap["file_size_bytes"]) == (0, 0, 0)


def test_by_event_sorted_by_count_then_name(client: TestClient) -> None:
    post_names(client, "zeta", "beta", "alpha", "beta", "zeta", "mid", "zeta")
    by_event = client.get(SNAPSHOT_URL).json()["by_event"]
    assert by_event == [
        {"event": "zeta", "count": 3},
        {"event": "beta", "count": 2},
        {"event": "alpha", "count": 1},
        {"event": "mid", "count": 1},
    ]


def test_eviction_through_the_app(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ring_capacity=3)
    with TestClient(create_app(config)) as c:
        post_names(c, "a", "a", "b", "c", "c")
        snap = c.get(SNAPSHOT_URL).json()
    assert snap["total"] == 3
    assert snap["evicted"] == 2
    assert snap["capacity"] == 3
    assert snap["last_seq"] == 5
    assert snap["by_event"] == [{"event": "c", "count": 2}, {"event": "b", "count": 1}]
    assert [e["seq"] for e in snap["last_events"]] == [5, 4, 3]
    assert len(read_lines(config.jsonl)) == 5  # the file keeps everything


def test_limit_default_and_values(client: TestClient) -> None:
    post_names(client, *(f"e{i}" for i in range(60)))

    def seqs(query: str) -> list[int]:
        r = client.get(SNAPSHOT_URL + query)
        assert r.status_code == 200
        return [e["seq"] for e in r.json()["last_events"]]

    assert seqs("") == list(range(60, 10, -1))  # 50 by default
    assert seqs("?limit=3") == [60, 59, 58]
    assert seqs("?limit=0") == []
    assert len(seqs("?limit=1000")) == 60


def test_limit_is_clamped_to_capacity(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ring_capacity=4)
    with TestClient(create_app(config)) as c:
        post_names(c, *"abcdef")
        for query in ("", "?limit=5", "?limit=99999999999999999999"):
            r = c.get(SNAPSHOT_URL + query)
            assert r.status_code == 200
            assert [e["seq"] for e in r.json()["last_events"]] == [6, 5, 4, 3]


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "1e3"])
def test_bad_limit_422(client: TestClient, value: str) -> None:
    r = client.get(SNAPSHOT_URL, params={"limit": value})
    assert r.status_code == 422
    assert detail_locs(r) == [["query", "limit"]]


def test_health(client: TestClient, config: Config) -> None:
    r = client.get(HEALTH_URL)
    assert r.status_code == 200
    health = r.json()
    assert health["ok"] is True
    assert health["ring_capacity"] == 500
    assert health["ring_size"] == 0
    assert health["sink_exists"] is True  # created at start-up
    assert health["sink_path"] == str(config.jsonl)
    assert health["sink_bytes"] == 0
    assert isinstance(health["version"], str) and health["version"]
    post_names(client, "a", "b")
    health = client.get(HEALTH_URL).json()
    assert health["ring_size"] == 2
    assert health["sink_bytes"] == config.jsonl.stat().st_size > 0


def test_reset_clears_the_ring_not_the_file(client: TestClient, config: Config) -> None:
    post_names(client, "a", "b", "a")
    r = client.delete(SNAPSHOT_URL)
    assert r.status_code == 200
    assert r.json() == {"ok": True, "cleared": 3}
    snap = client.get(SNAPSHOT_URL).json()
    assert (snap["total"], snap["by_event"], snap["last_events"]) == (0, [], [])
    assert snap["last_seq"] == 3
    assert len(stored(config)) == 3
    # seq is never reused after a reset.
    assert client.post(EVENT_URL, json=event()).json()["seq"] == 4


def test_404_and_405_are_json(client: TestClient) -> None:
    r = client.get("/api/metrics/nope")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}
    r = client.put(EVENT_URL, json=event())
    assert r.status_code == 405
    assert r.headers["content-type"].startswith("application/json")
    assert "detail" in r.json()


# --- concurrency ---------------------------------------------------------------


def test_200_concurrent_posts(config: Config) -> None:
    names = ["page_view", "link_click", "signup", "checkout_completed"]
    app = create_app(config)

    async def run() -> tuple[list[int], dict[str, Any]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test"
            ) as c:

                async def post(i: int) -> int:
                    r = await c.post(
                        EVENT_URL, json=event(names[i % 4], metadata={"i": i})
                    )
                    assert r.status_code == 202
                    seq: int = r.json()["seq"]
                    return seq

                seqs = await asyncio.wait_for(
                    asyncio.gather(*(post(i) for i in range(200))), timeout=60
                )
                snap = (await c.get(SNAPSHOT_URL, params={"limit": 500})).json()
                return list(seqs), snap

    seqs, snap = asyncio.run(run())
    assert sorted(seqs) == list(range(1, 201))
    lines = stored(config)
    assert [line["seq"] for line in lines] == list(range(1, 201))
    # Ring order = file order, and each acknowledged seq names its own event.
    assert snap["last_events"][::-1] == lines
    assert sorted(line["metadata"]["i"] for line in lines) == list(range(200))
    by_i = {line["metadata"]["i"]: line["seq"] for line in lines}
    assert [by_i[i] for i in range(200)] == seqs
    assert snap["total"] == 200
    assert snap["last_seq"] == 200
    assert {e["event"]: e["count"] for e in snap["by_event"]} == dict.fromkeys(
        names, 50
    )


def test_sink_failure_503_and_nothing_half_done() -> None:
    config = Config(jsonl=Path("/dev/full"))  # every write fails with ENOSPC
    with TestClient(create_app(config)) as c:
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 503
        assert "/dev/full" in r.json()["detail"]
        snap = c.get(SNAPSHOT_URL).json()
        assert (snap["total"], snap["last_seq"]) == (0, 0)
        r = c.get(HEALTH_URL)
        assert r.status_code == 503  # so the container healthcheck fails too
        assert r.json()["ok"] is False
        assert "/dev/full" in r.json()["error"]


# --- against a real server process ----------------------------------------------


@pytest.fixture
def metrics_server(tmp_path: Path) -> Iterator[MetricsServer]:
    """A fresh collector per test (the plugin's is one per session): seqs from 1."""
    with MetricsServer(tmp_path / "metrics.jsonl") as server:
        yield server


def test_real_server_413_for_a_chunked_body(metrics_server: MetricsServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"visitor_id": "visitor-1", "event": "e", "metadata": {"pad": "'
        for _ in range(32):
            yield b"x" * (64 * 1024)
        yield b'"}}'

    with httpx.Client(base_url=metrics_server.url, timeout=30) as c:
        r = c.post(EVENT_URL, content=chunks())
        assert r.status_code == 413
        assert "1,048,576" in r.json()["detail"]
        # The server is fine afterwards.
        assert c.post(EVENT_URL, json=event()).status_code == 202
    assert [line["seq"] for line in read_lines(metrics_server.jsonl_path)] == [1]


def test_real_server_concurrent_posts_from_threads(
    metrics_server: MetricsServer,
) -> None:
    names = ["page_view", "link_click"]
    with httpx.Client(base_url=metrics_server.url, timeout=30) as c:

        def post(i: int) -> int:
            r = c.post(EVENT_URL, json=event(names[i % 2], metadata={"i": i}))
            assert r.status_code == 202
            seq: int = r.json()["seq"]
            return seq

        with ThreadPoolExecutor(max_workers=16) as pool:
            seqs = list(pool.map(post, range(200)))
        snap = c.get(SNAPSHOT_URL, params={"limit": 500}).json()
    assert sorted(seqs) == list(range(1, 201))
    lines = read_lines(metrics_server.jsonl_path)
    assert [line["seq"] for line in lines] == list(range(1, 201))
    assert {line["metadata"]["i"]: line["seq"] for line in lines} == dict(
        enumerate(seqs)
    )
    assert snap["last_events"][::-1] == lines
    assert snap["by_event"] == [
        {"event": "link_click", "count": 100},
        {"event": "page_view", "count": 100},
    ]
