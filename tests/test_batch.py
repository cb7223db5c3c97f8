from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from conftest import SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service import Config, create_app

BATCH_URL = "/api/metrics/events"
NDJSON = {"content-type": "application/x-ndjson"}


def events(n: int, name: str = "page_view", **fields: Any) -> list[dict[str, Any]]:
    return [event(name, visitor_id=f"visitor-{i:04d}", **fields) for i in range(n)]


def ndjson(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


@pytest.fixture
def small(config: Config) -> Iterator[tuple[TestClient, Config]]:
    cfg = dataclasses.replace(config, max_batch=5, max_event_bytes=512)
    with TestClient(create_app(cfg)) as c:
        yield c, cfg


# --- accepted ----------------------------------------------------------------


def test_json_array_202(client: TestClient, config: Config) -> None:
    r = client.post(BATCH_URL, json=events(3))
    assert r.status_code == 202
    assert r.json() == {
        "ok": True,
        "stored": 3,
        "duplicates": 0,
        "sampled_out": 0,
        "file": str(config.jsonl),
        "first_seq": 1,
        "last_seq": 3,
    }
    lines = read_lines(config.jsonl)
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert [line["visitor_id"] for line in lines] == [
        "visitor-0000",
        "visitor-0001",
        "visitor-0002",
    ]


def test_events_object_202(client: TestClient, config: Config) -> None:
    r = client.post(BATCH_URL, json={"events": events(2)})
    assert r.status_code == 202
    assert (r.json()["first_seq"], r.json()["last_seq"]) == (1, 2)
    assert len(read_lines(config.jsonl)) == 2


def test_ndjson_with_blank_lines_and_blank_trailing_line(
    client: TestClient, config: Config
) -> None:
    items = events(3)
    body = orjson.dumps(items[0]) + b"\n\n" + orjson.dumps(items[1]) + b"\r\n"
    body += orjson.dumps(items[2]) + b"\n\n  \n"
    r = client.post(BATCH_URL, content=body, headers=NDJSON)
    assert r.status_code == 202
    assert r.json()["stored"] == 3
    assert [line["visitor_id"] for line in read_lines(config.jsonl)] == [
        i["visitor_id"] for i in items
    ]


def test_ndjson_malformed_line_400_names_the_line(
    client: TestClient, config: Config
) -> None:
    body = ndjson(events(1)) + b"\n{not json}\n"
    r = client.post(BATCH_URL, content=body, headers=NDJSON)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("line 3: malformed JSON")
    assert read_lines(config.jsonl) == []


def test_text_plain_beacon_batch(client: TestClient, config: Config) -> None:
    r = client.post(
        BATCH_URL,
        content=orjson.dumps(events(2)),
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 202
    assert r.json()["stored"] == 2


def test_ndjson_sent_as_text_plain_beacon(client: TestClient, config: Config) -> None:
    r = client.post(
        BATCH_URL,
        content=ndjson(events(3)) + b"\n",
        headers={"content-type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 202
    assert r.json()["stored"] == 3
    bad = client.post(
        BATCH_URL,
        content=ndjson(events(1)) + b"{oops\n",
        headers={"content-type": "text/plain"},
    )
    assert bad.status_code == 400
    assert bad.json()["detail"].startswith("line 2: malformed JSON")
    assert len(read_lines(config.jsonl)) == 3


def test_malformed_json_array_400(client: TestClient) -> None:
    r = client.post(BATCH_URL, content=b'[{"visitor_id": "visitor-1",}]')
    assert r.status_code == 400
    assert r.json()["detail"].startswith("malformed JSON")


def test_gzip_batch(client: TestClient, config: Config) -> None:
    r = client.post(
        BATCH_URL,
        content=gzip.compress(ndjson(events(4))),
        headers={**NDJSON, "content-encoding": "gzip"},
    )
    assert r.status_code == 202
    assert r.json()["stored"] == 4
    assert len(read_lines(config.jsonl)) == 4


def test_batch_is_one_write_with_consecutive_seqs(config: Config) -> None:
    app = create_app(config)
    with TestClient(app) as c:
        sink = app.state.service.sink
        writes: list[bytes] = []
        original = sink.write

        def counting(data: bytes) -> None:
            writes.append(data)
            original(data)

        sink.write = counting
        assert c.post(BATCH_URL, json=events(1)).status_code == 202
        r = c.post(BATCH_URL, json=events(50))
        assert r.status_code == 202
    assert (r.json()["first_seq"], r.json()["last_seq"]) == (2, 51)
    assert len(writes) == 2
    assert writes[1].count(b"\n") == 50
    assert [line["seq"] for line in read_lines(config.jsonl)] == list(range(1, 52))


def test_max_batch_exactly_is_accepted(client: TestClient, config: Config) -> None:
    r = client.post(BATCH_URL, json=events(1000))
    assert r.status_code == 202
    assert (r.json()["stored"], r.json()["last_seq"]) == (1000, 1000)


# --- refused: nothing stored -------------------------------------------------


def test_1001_events_422_states_limit_and_count(
    client: TestClient, config: Config
) -> None:
    r = client.post(BATCH_URL, json=events(1001))
    assert r.status_code == 422
    assert r.json() == {"detail": "batch has 1,001 events; the limit is 1,000 events"}
    r = client.post(BATCH_URL, content=ndjson(events(1001)), headers=NDJSON)
    assert r.status_code == 422
    assert "1,001" in r.json()["detail"]
    assert read_lines(config.jsonl) == []


def test_max_batch_is_configurable(small: tuple[TestClient, Config]) -> None:
    c, _ = small
    assert c.post(BATCH_URL, json=events(5)).status_code == 202
    r = c.post(BATCH_URL, json=events(6))
    assert r.status_code == 422
    assert r.json()["detail"] == "batch has 6 events; the limit is 5 events"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"[]", {}),
        (b'{"events": []}', {}),
        (b"\n\n  \n", NDJSON),
    ],
)
def test_empty_batch_422(
    client: TestClient, config: Config, body: bytes, headers: dict[str, str]
) -> None:
    r = client.post(BATCH_URL, content=body, headers=headers)
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]
    assert read_lines(config.jsonl) == []


def test_two_bad_events_both_reported_nothing_stored(
    client: TestClient, config: Config
) -> None:
    items = events(5)
    items[1]["visitor_id"] = "abc"
    items[3] = {"event": "page_view", "colour": "red"}
    r = client.post(BATCH_URL, json=items)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [(d["index"], d["loc"]) for d in detail] == [
        (1, ["visitor_id"]),
        (3, ["visitor_id"]),
        (3, ["colour"]),
    ]
    assert all(d["msg"] for d in detail)
    assert read_lines(config.jsonl) == []
    assert client.get(SNAPSHOT_URL).json()["total"] == 0


def test_non_object_item_422_with_index(client: TestClient, config: Config) -> None:
    r = client.post(BATCH_URL, json=[event(), "page_view", None])
    assert r.status_code == 422
    assert [(d["index"], d["loc"], d["msg"]) for d in r.json()["detail"]] == [
        (1, [], "expected a JSON object, got a string"),
        (2, [], "expected a JSON object, got null"),
    ]
    assert read_lines(config.jsonl) == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"visitor_id": "visitor-1", "event": "x"}', "expected a JSON array"),
        (b'"hello"', "got a string"),
        (b'{"events": {"a": 1}}', "'events' must be an array"),
        (b'{"events": [], "sent_at": "2024-01-01"}', "unknown field 'sent_at'"),
    ],
)
def test_not_a_batch_422(client: TestClient, body: bytes, words: str) -> None:
    r = client.post(BATCH_URL, content=body)
    assert r.status_code == 422
    assert words in r.json()["detail"]


def test_event_over_max_event_bytes_422_states_limit_and_size(
    small: tuple[TestClient, Config],
) -> None:
    c, cfg = small
    big = event(metadata={"pad": "x" * 600})
    size = len(orjson.dumps(big))
    r = c.post(BATCH_URL, json=[event(), big])
    assert r.status_code == 422
    [item] = r.json()["detail"]
    assert item["index"] == 1
    assert item["loc"] == []
    assert item["msg"] == (
        f"event is {size:,} bytes serialized; the limit is 512 bytes"
    )
    assert read_lines(cfg.jsonl) == []


def test_body_over_max_body_bytes_413(config: Config) -> None:
    cfg = dataclasses.replace(config, max_body_bytes=1000)
    with TestClient(create_app(cfg)) as c:
        r = c.post(BATCH_URL, json=events(30))
    assert r.status_code == 413
    assert "the limit is 1,000 bytes" in r.json()["detail"]


def test_unsupported_content_type_415(client: TestClient) -> None:
    r = client.post(
        BATCH_URL, content=b"[]", headers={"content-type": "application/xml"}
    )
    assert r.status_code == 415
    assert "application/x-ndjson" in r.json()["detail"]


# --- retries and duplicates --------------------------------------------------


def test_retried_batch_is_not_counted_twice(client: TestClient, config: Config) -> None:
    items = [event(visitor_id=f"visitor-{i}", event_id=f"id-{i}") for i in range(10)]
    first = client.post(BATCH_URL, json=items)
    assert first.status_code == 202
    assert (first.json()["stored"], first.json()["duplicates"]) == (10, 0)
    retry = client.post(BATCH_URL, json=items)
    assert retry.status_code == 202
    body = retry.json()
    assert (body["stored"], body["duplicates"]) == (0, 10)
    assert (body["first_seq"], body["last_seq"]) == (None, None)
    # A retry that overlaps only partly stores just the new events.
    partly = client.post(BATCH_URL, json=[*items[5:], event(event_id="id-new")])
    assert partly.status_code == 202
    assert (partly.json()["stored"], partly.json()["duplicates"]) == (1, 5)
    assert partly.json()["first_seq"] == 11
    assert len(read_lines(config.jsonl)) == 11
    snap = client.get(SNAPSHOT_URL).json()
    assert snap["total"] == 11
    assert snap["by_event"] == [{"event": "page_view", "count": 11}]


def test_duplicates_within_one_batch(client: TestClient, config: Config) -> None:
    items = [
        event(event_id="a"),
        event(event_id="b"),
        event(event_id="a"),
        event(),
        event(),
    ]
    r = client.post(BATCH_URL, json=items)
    assert r.status_code == 202
    assert (r.json()["stored"], r.json()["duplicates"]) == (4, 1)
    assert [line.get("event_id") for line in read_lines(config.jsonl)] == [
        "a",
        "b",
        None,
        None,
    ]


def test_dedupe_window_zero_stores_repeats(config: Config) -> None:
    cfg = dataclasses.replace(config, dedupe_window=0)
    with TestClient(create_app(cfg)) as c:
        c.post(BATCH_URL, json=[event(event_id="a")])
        r = c.post(BATCH_URL, json=[event(event_id="a")])
    assert r.json()["stored"] == 1
    assert len(read_lines(cfg.jsonl)) == 2


# --- clock skew, policy inside a batch ---------------------------------------


def test_clock_skew_sent_at_corrects_timestamp(
    client: TestClient, config: Config
) -> None:
    # The client's clock is two hours fast: it stamped and sent at its 12:00.
    client_now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    stamp = (client_now - dt.timedelta(seconds=30)).isoformat()
    r = client.post(
        BATCH_URL,
        json=[event(timestamp=stamp, sent_at=client_now.isoformat()), event()],
    )
    assert r.status_code == 202
    first, second = read_lines(config.jsonl)
    assert "sent_at" not in first
    received = dt.datetime.fromisoformat(first["received_at"][:-1])
    corrected = dt.datetime.fromisoformat(first["timestamp"][:-1])
    # timestamp + (received - sent_at) = received - 30 s, within the test's own latency.
    assert abs((received - corrected).total_seconds() - 30) < 60
    assert second["timestamp"] == second["received_at"]


def test_sampled_out_in_a_batch(config: Config) -> None:
    cfg = dataclasses.replace(config, sample={"scroll": 0.0})
    with TestClient(create_app(cfg)) as c:
        r = c.post(BATCH_URL, json=[*events(3, "scroll"), *events(2)])
    assert r.status_code == 202
    assert (r.json()["stored"], r.json()["sampled_out"]) == (2, 3)
    assert (r.json()["first_seq"], r.json()["last_seq"]) == (1, 2)
    assert [line["event"] for line in read_lines(cfg.jsonl)] == ["page_view"] * 2


def test_all_sampled_out_stores_nothing(config: Config) -> None:
    cfg = dataclasses.replace(config, sample={"scroll": 0.0})
    with TestClient(create_app(cfg)) as c:
        r = c.post(BATCH_URL, json=events(3, "scroll"))
    assert r.status_code == 202
    assert r.json()["stored"] == 0
    assert r.json()["sampled_out"] == 3
    assert r.json()["first_seq"] is None


def test_allowlist_in_a_batch_reports_each_index(config: Config) -> None:
    cfg = dataclasses.replace(config, allowed_events=frozenset({"page_view"}))
    with TestClient(create_app(cfg)) as c:
        r = c.post(BATCH_URL, json=[event(), event("nope"), event("other")])
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [(d["index"], d["loc"]) for d in detail] == [(1, ["event"]), (2, ["event"])]
    assert "allowed: page_view" in detail[0]["msg"]
    assert read_lines(cfg.jsonl) == []
