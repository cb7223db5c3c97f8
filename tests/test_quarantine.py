"""The quarantine: refused ingest requests recorded, read, waited for, streamed and
kept in their own JSONL file (store/quarantine.py, read/rejected.py)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, event, read_lines, run_app
from starlette.datastructures import QueryParams
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.app import App
from metrics_service.cli import main
from metrics_service.ingest.clock import received_now
from metrics_service.read.filters import Filters
from metrics_service.read.query import parse_filters
from metrics_service.read.rejected import RejectionFilters
from metrics_service.read.stream import events
from metrics_service.settings import ConfigError
from metrics_service.store import quarantine as quarantine_module
from metrics_service.store import rotation
from metrics_service.store.quarantine import (
    BATCH_BYTES,
    BATCH_COUNT,
    Quarantine,
    Rejection,
    Request,
)
from metrics_service.store.refused_body import BODY_LIMIT

BATCH_URL = "/api/metrics/events"
REJECTED_URL = "/api/metrics/behavior/rejected"
WAIT_URL = "/api/metrics/behavior/wait"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(jsonl=tmp_path / "m.jsonl", max_body_bytes=64 * 1024)


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as c:
        yield c


def rejections(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get(REJECTED_URL, params=params)
    assert r.status_code == 200
    found: list[dict[str, Any]] = r.json()["rejections"]
    return found


def test_each_refused_status_is_recorded_newest_first(client: TestClient) -> None:
    assert client.post(EVENT_URL, content=b"{", headers=JSON).status_code == 400
    big = b'{"visitor_id": "' + b"v" * 70_000 + b'"}'
    assert client.post(EVENT_URL, content=big, headers=JSON).status_code == 413
    r = client.post(EVENT_URL, content=b"{}", headers={"Content-Type": "image/png"})
    assert r.status_code == 415
    assert client.post(EVENT_URL, json={"event": "x"}).status_code == 422
    r = client.get(REJECTED_URL)
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 4 and body["last_id"] == 4
    assert [(x["id"], x["status"]) for x in body["rejections"]] == [
        (4, 422),
        (3, 415),
        (2, 413),
        (1, 400),
    ]
    by_status = {x["status"]: x for x in body["rejections"]}
    assert by_status[400]["body"] == "{" and by_status[400]["truncated"] is False
    # 413 and 415 are refused before the body is read: no body is recorded.
    assert by_status[413]["body"] is None and by_status[415]["body"] is None
    assert by_status[415]["content_type"] == "image/png"
    assert client.get(SNAPSHOT_URL).json()["rejected"] == 4


def test_a_record_holds_exactly_the_answers_detail(client: TestClient) -> None:
    batch = [event("page_view"), event("signup", visitor_id="visitor-7", bad=1)]
    r = client.post(
        BATCH_URL,
        json=batch,
        headers={
            "User-Agent": "probe/1.0",
            "Origin": "https://shop.example",
            "X-Metrics-Test-Id": "tests/test_x.py::test_y",
        },
    )
    assert r.status_code == 422
    [record] = rejections(client)
    assert list(record) == [
        "id",
        "received_at",
        "path",
        "status",
        "detail",
        "content_type",
        "user_agent",
        "origin",
        "test_id",
        "visitor_id",
        "event",
        "body",
        "truncated",
    ]
    assert record["detail"] == r.json()["detail"]
    assert record["detail"][0]["index"] == 1
    assert record["path"] == BATCH_URL and record["status"] == 422
    assert record["received_at"].endswith("Z")
    assert record["user_agent"] == "probe/1.0"
    assert record["origin"] == "https://shop.example"
    assert record["content_type"] == "application/json"
    assert record["test_id"] == "tests/test_x.py::test_y"
    # The refused event of the batch, not its first one.
    assert (record["visitor_id"], record["event"]) == ("visitor-7", "signup")
    assert orjson.loads(record["body"]) == batch


def test_no_test_id_when_the_tag_itself_is_refused(client: TestClient) -> None:
    r = client.post(EVENT_URL, json=event(), headers={"X-Metrics-Test-Id": ""})
    assert r.status_code == 422
    [record] = rejections(client)
    assert "test_id" not in record
    assert record["detail"] == r.json()["detail"]


def test_redaction_and_credentials_at_any_depth(tmp_path: Path) -> None:
    config = Config(
        jsonl=tmp_path / "m.jsonl",
        redact_keys=frozenset({"email"}),
        ingest_token="sekrit-token",
    )
    body = {
        "visitor_id": "visitor-123",
        "event": "signup",
        "metadata": {
            "Email": "a@b.example",
            "deep": [{"email": "c@d.example", "api_key": "k1", "keep": 1}],
            "writeKey": "k2",
            "Token": "k3",
            "api_secret": "k4",
        },
        "extra": True,
    }
    with TestClient(create_app(config)) as c:
        r = c.post(
            EVENT_URL + "?token=sekrit-token",
            json=body,
            headers={"Authorization": "Bearer sekrit-token"},
        )
        assert r.status_code == 422
        [record] = rejections(c, token="sekrit-token")
    assert orjson.loads(record["body"])["metadata"] == {
        "Email": "[redacted]",
        "deep": [{"email": "[redacted]", "keep": 1}],
    }
    written = config.rejected_file
    assert written is not None
    text = written.read_text()
    for secret in ("sekrit-token", "a@b.example", "c@d.example", "k1", "k2", "k3"):
        assert secret not in text
    assert "authorization" not in text.lower()


def test_ndjson_lines_are_redacted_one_by_one(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", redact_keys=frozenset({"email"}))
    lines = [
        orjson.dumps(event(metadata={"email": "x@y.example"})),
        b"{broken",
        orjson.dumps(event("late", visitor_id="visitor-9")),
    ]
    with TestClient(create_app(config)) as c:
        r = c.post(
            BATCH_URL,
            content=b"\n".join(lines) + b"\n",
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 400
        [record] = rejections(c)
    assert "x@y.example" not in record["body"]
    assert "{broken" in record["body"]


def test_body_is_cut_at_4_kib_after_gzip(client: TestClient) -> None:
    batch = [event(metadata={"n": i, "pad": "é" * 30}) for i in range(200)]
    batch.append({"event": "x"})
    raw = orjson.dumps(batch)
    assert len(raw) > BODY_LIMIT
    r = client.post(
        BATCH_URL,
        content=gzip.compress(raw),
        headers={**JSON, "Content-Encoding": "gzip"},
    )
    assert r.status_code == 422
    [record] = rejections(client)
    assert record["truncated"] is True
    assert len(record["body"].encode()) <= BODY_LIMIT + 2
    assert record["body"].startswith('[{"visitor_id":"visitor-123"')
    assert record["event"] == "x" and record["visitor_id"] is None


def test_invalid_utf8_is_replaced(client: TestClient) -> None:
    r = client.post(EVENT_URL, content=b'{"event": "\xff\xfe"}', headers=JSON)
    assert r.status_code == 400
    [record] = rejections(client)
    assert record["body"] == '{"event": "\ufffd\ufffd"}'


def test_filters_limit_and_after(client: TestClient) -> None:
    client.post(EVENT_URL, json={"event": "a", "visitor_id": "v"})  # 422, short id
    client.post(EVENT_URL, json=event("b", bad=1), headers={"X-Metrics-Test-Id": "t"})
    client.post(EVENT_URL, content=b"{", headers=JSON)  # 400
    assert [x["id"] for x in rejections(client, status=422)] == [2, 1]
    assert [x["id"] for x in rejections(client, status=[400, 422])] == [3, 2, 1]
    assert [x["id"] for x in rejections(client, event="b")] == [2]
    assert [x["id"] for x in rejections(client, event=["a", "b"])] == [2, 1]
    assert [x["id"] for x in rejections(client, visitor_id="v")] == [1]
    assert [x["id"] for x in rejections(client, test_id="t")] == [2]
    assert [x["id"] for x in rejections(client, after=1)] == [3, 2]
    r = client.get(REJECTED_URL, params={"limit": 1, "status": 422})
    assert r.status_code == 200
    assert r.json()["total"] == 2 and len(r.json()["rejections"]) == 1
    for bad in ({"nope": 1}, {"status": "x"}, {"after": "x"}, {"limit": -1}):
        r = client.get(REJECTED_URL, params=bad)
        assert r.status_code == 422, bad
        assert r.json()["detail"][0]["loc"] == ["query", next(iter(bad))]


def test_filters_take_the_operators(client: TestClient) -> None:
    client.post(EVENT_URL, json={"event": "a", "visitor_id": "v"})  # 422, short id
    client.post(
        EVENT_URL,
        json=event("checkout_done", bad=1),
        headers={"X-Metrics-Test-Id": "t-1"},
    )
    client.post(EVENT_URL, content=b"{", headers=JSON)  # 400: no event, no visitor
    assert [x["id"] for x in rejections(client, status__gte=413)] == [2, 1]
    assert [x["id"] for x in rejections(client, status__in="400,413")] == [3]
    assert [x["id"] for x in rejections(client, event__prefix="check")] == [2]
    assert [x["id"] for x in rejections(client, event__ne="a")] == [3, 2]
    assert [x["id"] for x in rejections(client, event__exists="false")] == [3]
    assert [x["id"] for x in rejections(client, visitor_id__contains="itor")] == [2]
    assert [x["id"] for x in rejections(client, test_id__prefix="t-")] == [2]
    r = client.get(
        WAIT_URL, params={"rejected": "true", "event__prefix": "check", "timeout": 0.05}
    )
    assert r.status_code == 200
    assert [x["id"] for x in r.json()["rejections"]] == [2]
    for bad in ({"event__between": "a"}, {"status__gte": "x"}, {"event_id__eq": "e"}):
        r = client.get(REJECTED_URL, params=bad)
        assert r.status_code == 422, bad
        assert r.json()["detail"][0]["loc"] == ["query", next(iter(bad))]


def test_a_streams_filters_match_records_with_their_operators() -> None:
    params = "event__prefix=check&visitor_id__ne=v-2&event_id__prefix=e&meta.plan=pro"
    filters = RejectionFilters.of_events(parse_filters(QueryParams(params)))

    def record(event: str | None, visitor_id: str | None) -> Rejection:
        return Rejection(1, 422, event, visitor_id, None, b"{}")

    # event_id and metadata are about stored events: a record is not held to them.
    assert filters(record("checkout", "v-1"))
    assert filters(record("checkout", None))
    assert not filters(record("checkout", "v-2"))
    assert not filters(record("page_view", "v-1"))
    assert not filters(record(None, "v-1"))


def test_refusals_of_other_endpoints_are_not_recorded(
    client: TestClient, config: Config
) -> None:
    assert client.get(SNAPSHOT_URL, params={"limit": "x"}).status_code == 422
    assert client.get(WAIT_URL, params={"nope": 1}).status_code == 422
    assert client.post(EVENT_URL, json=event()).status_code == 202
    assert rejections(client) == []
    assert client.get(SNAPSHOT_URL).json()["rejected"] == 0
    # The file is made by the first refusal, not at start-up.
    assert config.rejected_file is not None and not config.rejected_file.exists()


def test_delete_and_the_main_reset_clear_it(client: TestClient) -> None:
    for _ in range(2):
        client.post(EVENT_URL, content=b"{", headers=JSON)
    r = client.delete(REJECTED_URL)
    assert r.status_code == 200
    assert r.json() == {"ok": True, "cleared": 2}
    assert rejections(client) == []
    client.post(EVENT_URL, content=b"{", headers=JSON)
    client.post(EVENT_URL, json=event())
    r = client.delete(SNAPSHOT_URL)
    assert r.status_code == 200
    assert r.json() == {"ok": True, "cleared": 1}
    assert rejections(client) == []
    snap = client.get(SNAPSHOT_URL).json()
    assert snap["rejected"] == 0
    # Ids go on: a mark taken before the reset still means "after this".
    client.post(EVENT_URL, content=b"{", headers=JSON)
    assert [x["id"] for x in rejections(client)] == [4]


def test_reads_need_the_read_token(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", read_token="r-token")
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, content=b"{", headers=JSON).status_code == 400
        assert c.get(REJECTED_URL).status_code == 401
        assert c.delete(REJECTED_URL).status_code == 401
        r = c.get(REJECTED_URL, headers={"Authorization": "Bearer r-token"})
        assert r.status_code == 200
        assert r.json()["total"] == 1


def test_capacity_bounds_what_is_kept(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", reject_capacity=3)
    with TestClient(create_app(config)) as c:
        for _ in range(5):
            c.post(EVENT_URL, content=b"{", headers=JSON)
        r = c.get(REJECTED_URL, params={"limit": 100})
        assert r.status_code == 200
        assert r.json()["total"] == 3 and r.json()["last_id"] == 5
        assert [x["id"] for x in r.json()["rejections"]] == [5, 4, 3]
        assert c.get(SNAPSHOT_URL).json()["rejected"] == 5
        quarantine = c.app.service.quarantine  # type: ignore[attr-defined]
        assert quarantine.bytes == sum(len(x.line) for x in quarantine.records)
    assert config.rejected_file is not None
    assert len(read_lines(config.rejected_file)) == 5


def test_memory_budget_holds_for_large_details() -> None:
    quarantine = Quarantine(2, None)
    detail = [{"loc": ["x"], "msg": "m" * 10_000}] * 5
    for _ in range(3):
        quarantine.record(Request("/p", 422, detail, [], b"{}", None))
    # Each record is over the budget of two: only the newest stays.
    assert [found.id for found in quarantine.records] == [3]
    assert quarantine.bytes == len(quarantine.records[0].line)


def test_refusals_are_recorded_in_batches_that_every_read_settles(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        path = tmp_path / "m.rejected.jsonl"
        quarantine = Quarantine(100, path)
        seen: list[int] = []
        quarantine.listeners.append(lambda found: seen.append(found.id))
        for _ in range(3):
            quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))
        # Not recorded yet: a read settles them first, in order.
        assert seen == []
        assert [found.id for found in quarantine.records] == [1, 2, 3]
        assert seen == [1, 2, 3]
        quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))
        assert seen == [1, 2, 3]
        # Without a read, the next drain records it and writes every line.
        for _ in range(50):
            await asyncio.sleep(0.01)
            if path.exists() and len(read_lines(path)) == 4:
                break
        assert seen == [1, 2, 3, 4]
        assert [line["id"] for line in read_lines(path)] == [1, 2, 3, 4]
        quarantine.close()

    asyncio.run(body())


def test_a_failing_listener_leaves_the_record_and_the_other_listeners(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quarantine = Quarantine(10, None)
    heard: list[int] = []

    def broken(found: Rejection) -> None:
        raise RuntimeError("boom")

    quarantine.listeners += [broken, lambda found: heard.append(found.id)]
    found = quarantine.record(Request("/p", 422, "bad", [], b"{}", None))
    assert found is not None
    assert heard == [1]
    assert [r.id for r in quarantine.records] == [1]
    assert "a quarantine listener failed on record 1" in caplog.text
    assert "could not record" not in caplog.text


def test_a_batch_is_recorded_at_once_when_full() -> None:
    async def body() -> None:
        quarantine = Quarantine(500, None)
        seen: list[int] = []
        quarantine.listeners.append(lambda found: seen.append(found.id))
        for _ in range(BATCH_COUNT):
            quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))
        assert len(seen) == BATCH_COUNT
        # Large bodies: the batch holds no more than BATCH_BYTES of them.
        big = b"x" * (BATCH_BYTES // 2)
        for _ in range(3):
            quarantine.defer(Request("/p", 400, "bad", [], big, None))
        assert len(seen) == BATCH_COUNT + 3
        assert quarantine.deferred == []
        # And a batch's problems: the detail of 1,000 refused events counts too.
        detail = [{"index": i, "loc": ["event"], "msg": "bad"} for i in range(1000)]
        quarantine.defer(Request("/p", 422, detail, [], b"[]", None))
        assert len(seen) == BATCH_COUNT + 3
        quarantine.defer(Request("/p", 422, detail, [], b"[]", None))
        assert len(seen) == BATCH_COUNT + 5

    asyncio.run(body())


def test_a_refusal_keeps_the_time_it_was_received() -> None:
    async def body() -> None:
        quarantine = Quarantine(10, None)
        quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))
        before = received_now().text
        await asyncio.sleep(0.02)
        (found,) = quarantine.records
        assert orjson.loads(found.line)["received_at"] <= before

    asyncio.run(body())


def test_a_failing_write_of_a_batch_never_stops_the_next_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not only OSError: a rotation's worker thread that cannot start raises a
    # RuntimeError. Counted as not written, and later batches go on.
    async def body() -> tuple[list[int], list[dict[str, Any]], int]:
        path = tmp_path / "m.rejected.jsonl"
        quarantine = Quarantine(100, path)
        assert quarantine.sink is not None
        write = quarantine.sink.write
        calls = 0

        def failing_once(data: bytes) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("can't start new thread")
            return write(data)

        monkeypatch.setattr(quarantine.sink, "write", failing_once)
        seen: list[int] = []
        quarantine.listeners.append(lambda found: seen.append(found.id))
        quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))
        await asyncio.sleep(0.05)
        quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))
        await asyncio.sleep(0.05)
        lines = read_lines(path) if path.exists() else []
        found, errors = list(seen), quarantine.write_errors
        quarantine.close()
        return found, lines, errors

    seen, lines, errors = asyncio.run(body())
    assert seen == [1, 2]
    assert [line["id"] for line in lines] == [2]
    assert errors == 1


def test_a_batch_left_by_a_loop_that_ended_is_recorded_by_the_next_refusal(
    tmp_path: Path,
) -> None:
    # An ASGI test client without its lifespan runs each request on a loop of its own:
    # a batch scheduled on one that ended must not keep the next ones from coming.
    path = tmp_path / "m.rejected.jsonl"
    quarantine = Quarantine(100, path)
    seen: list[int] = []
    quarantine.listeners.append(lambda found: seen.append(found.id))

    async def refuse() -> None:
        for _ in range(2):
            quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))
            await asyncio.sleep(0)

    asyncio.run(refuse())
    quarantine.defer(Request("/p", 422, "bad", [], b"{}", None))  # no loop: at once
    assert seen == [1, 2, 3]
    assert [line["id"] for line in read_lines(path)] == [1, 2, 3]
    asyncio.run(refuse())
    quarantine.close()
    assert [line["id"] for line in read_lines(path)] == [1, 2, 3, 4, 5]


def test_capacity_zero_turns_it_off(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", reject_capacity=0)
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, content=b"{", headers=JSON).status_code == 400
        r = c.get(REJECTED_URL)
        assert r.status_code == 200
        assert r.json() == {"total": 0, "rejections": [], "last_id": 0}
        assert c.get(SNAPSHOT_URL).json()["rejected"] == 0
        r = c.get(WAIT_URL, params={"rejected": "true", "timeout": 0})
        assert r.status_code == 422
        assert "METRICS_REJECT_CAPACITY=0" in r.json()["detail"][0]["msg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_file_off_keeps_memory(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", reject_jsonl="off")
    with TestClient(create_app(config)) as c:
        c.post(EVENT_URL, content=b"{", headers=JSON)
        assert len(rejections(c)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_file_moved_by_metrics_reject_jsonl(tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "refused.jsonl"
    config = Config.from_env(
        {"METRICS_JSONL": str(tmp_path / "m.jsonl"), "METRICS_REJECT_JSONL": str(moved)}
    )
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, content=b"{", headers=JSON).status_code == 400
    assert [line["status"] for line in read_lines(moved)] == [400]
    assert not (tmp_path / "m.rejected.jsonl").exists()


def test_a_file_that_cannot_be_written_never_fails_the_answer(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", reject_jsonl=Path("/dev/full"))
    with TestClient(create_app(config)) as c:
        for _ in range(3):
            assert c.post(EVENT_URL, content=b"{", headers=JSON).status_code == 400
        assert len(rejections(c)) == 3
        quarantine = c.app.service.quarantine  # type: ignore[attr-defined]
    # Written (and failed) by the time the service stopped, in one or more writes.
    assert quarantine.write_errors == 3


def test_metrics_counts_every_refusal_answered_before_the_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", reject_jsonl=Path("/dev/full"))

    async def body(app: App, c: httpx.AsyncClient) -> str:
        monkeypatch.setattr(quarantine_module, "FLUSH_EVERY", 1.0)
        app.service.quarantine.flushed = asyncio.get_running_loop().time()
        for _ in range(2):
            r = await c.post(EVENT_URL, content=b"{", headers=JSON)
            assert r.status_code == 400
        scraped = await c.get("/metrics")
        assert scraped.status_code == 200
        return scraped.text

    text = run_app(config, body)
    assert "metrics_quarantine_size 2.0" in text
    assert "metrics_quarantine_write_errors_total 2.0" in text


@pytest.mark.parametrize("step", ["defer", "_record"])
def test_a_recording_bug_never_fails_the_answer(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    step: str,
) -> None:
    # defer() runs in the request, _record() in the batch a later read settles.
    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    quarantine = client.app.service.quarantine  # type: ignore[attr-defined]
    monkeypatch.setattr(quarantine, step, broken)
    r = client.post(EVENT_URL, content=b"{", headers=JSON)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("malformed JSON")
    r = client.get(REJECTED_URL)
    assert r.status_code == 200
    assert r.json()["total"] == 0
    assert "could not record a refused request to /api/metrics/event" in caplog.text


@pytest.mark.parametrize("name", ["m.jsonl", "m-20260101T000000-1.jsonl"])
def test_a_rejected_file_that_would_mix_with_the_sink_stops_start_up(
    tmp_path: Path, name: str
) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", reject_jsonl=tmp_path / name)
    with pytest.raises(ConfigError) as caught:
        create_app(config)
    assert caught.value.name == "METRICS_REJECT_JSONL"


def test_file_is_clean_jsonl_rotates_and_is_never_replayed(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", rotate_bytes=2000, rotate_keep=3)
    rejected = config.rejected_file
    assert rejected == tmp_path / "m.rejected.jsonl"
    with TestClient(create_app(config)) as c:
        for i in range(30):
            assert c.post(EVENT_URL, json=event(bad=i)).status_code == 422
        assert c.post(EVENT_URL, json=event()).status_code == 202
        c.app.service.quarantine.rotator.wait(10)  # type: ignore[attr-defined]
    segments = rotation.segments(rejected)
    assert segments and all(s.name.startswith("m.rejected-") for s in segments)
    assert len({s.name.removesuffix(".gz") for s in segments}) <= 3
    assert rotation.segments(config.jsonl) == []
    ids = []
    for source in [*segments, rejected]:
        data = (
            gzip.decompress(source.read_bytes())
            if source.suffix == ".gz"
            else source.read_bytes()
        )
        assert data.endswith(b"\n")
        ids += [orjson.loads(line)["id"] for line in data.splitlines()]
    assert ids == sorted(ids) and ids[-1] == 30
    # The sink holds the one accepted event and no refused line.
    assert [line["seq"] for line in read_lines(config.jsonl)] == [1]
    # A restart replays the sink only, and the quarantine's ids go on.
    with TestClient(create_app(config)) as c:
        snap = c.get(SNAPSHOT_URL).json()
        assert snap["total"] == 1 and snap["rejected"] == 0
        c.post(EVENT_URL, content=b"{", headers=JSON)
        assert [x["id"] for x in rejections(c)] == [31]


def test_foreign_sdk_lanes_are_recorded_without_their_keys(client: TestClient) -> None:
    body = {"writeKey": "seg-secret", "event": "Order Completed", "properties": {}}
    r = client.post("/segment/v1/track", json=body)
    assert r.status_code in (400, 422)
    [record] = rejections(client)
    assert record["path"] == "/segment/v1/track"
    assert record["detail"] == r.json()["detail"]
    assert record["event"] == "Order Completed"
    assert "seg-secret" not in record["body"]


# A refusal of each status on every SDK family's lane: (path, body, content type).
SDK_REFUSALS = {
    400: [
        ("/segment/v1/track", b'{"event": "A", ', "application/json"),
        ("/posthog/e/", b'{"event": "$x", ', "application/json"),
        ("/ga4/mp/collect?measurement_id=G-1", b'{"client_id": ', "application/json"),
    ],
    413: [
        ("/segment/v1/batch", b"[" + b" " * 70_000 + b"]", "application/json"),
        ("/posthog/batch/", b"[" + b" " * 70_000 + b"]", "application/json"),
        ("/ga4/mp/collect?measurement_id=G-1", b" " * 70_000, "application/json"),
    ],
    415: [
        ("/segment/v1/track", b"{}", "image/png"),
        ("/posthog/e/", b"{}", "image/png"),
        ("/ga4/mp/collect?measurement_id=G-1", b"{}", "image/png"),
    ],
    422: [
        ("/segment/v1/track", b'{"event": "A", "properties": {}}', "application/json"),
        ("/posthog/e/", b'{"event": "$x", "properties": {}}', "application/json"),
        (
            "/ga4/mp/collect?measurement_id=G-1",
            b'{"client_id": "12.34", "events": [{"name": "_bad"}]}',
            "application/json",
        ),
    ],
}


@pytest.mark.parametrize("status", sorted(SDK_REFUSALS))
def test_every_sdk_lane_records_each_refused_status(
    client: TestClient, status: int
) -> None:
    answers = []
    for path, body, kind in SDK_REFUSALS[status]:
        r = client.post(path, content=body, headers={"Content-Type": kind})
        assert r.status_code == status, (path, r.text)
        answers.append(r.json()["detail"])
    found = rejections(client)[::-1]
    assert [x["path"] for x in found] == [
        path.partition("?")[0] for path, _, _ in SDK_REFUSALS[status]
    ]
    assert {x["status"] for x in found} == {status}
    assert [x["detail"] for x in found] == answers
    if status in (400, 422):
        assert [x["body"] for x in found] == [
            body.decode() for _, body, _ in SDK_REFUSALS[status]
        ]
    if status == 422:
        assert [x["event"] for x in found] == ["A", "$x", "_bad"]
    assert client.get(SNAPSHOT_URL).json()["rejected"] == 3


def test_a_refused_gtag_hit_names_its_event_and_visitor(client: TestClient) -> None:
    hits = b"en=page_view&ep.x=1&cid=123.456\nen=scroll&epn.percent=ninety&cid=123.456"
    r = client.post(
        "/ga4/g/collect?v=2&tid=G-1",
        content=hits,
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 422
    assert r.json()["detail"][0]["index"] == 1
    [record] = rejections(client)
    assert record["body"] == hits.decode()
    assert (record["event"], record["visitor_id"]) == ("scroll", "123.456")
    client.post(EVENT_URL, content=b"not=json&en=x", headers=JSON)
    assert rejections(client)[0]["event"] == "x"


def test_a_refused_gtag_get_hit_keeps_its_query_as_the_body(
    client: TestClient,
) -> None:
    hit = "v=2&tid=G-1&en=scroll&epn.percent=ninety&cid=123.456"
    r = client.get("/ga4/g/collect?" + hit)
    assert r.status_code == 422
    [record] = rejections(client)
    assert record["body"] == hit
    assert (record["event"], record["visitor_id"]) == ("scroll", "123.456")
    assert record["path"] == "/ga4/g/collect"


def test_a_json_body_holding_a_form_field_is_kept_as_sent(client: TestClient) -> None:
    body = b'{"visitor_id":"visitor-1","event":"x","q":"a&data=eyJhIjoxfQ&b=c"}'
    assert client.post(EVENT_URL, content=body, headers=JSON).status_code == 422
    [record] = rejections(client)
    assert record["body"] == body.decode()
    assert record["event"] == "x"


def test_configured_tokens_never_appear_even_in_a_body_that_is_no_json(
    tmp_path: Path,
) -> None:
    config = Config(
        jsonl=tmp_path / "m.jsonl", ingest_token="in-sekrit", read_token="rd-sekrit"
    )
    with TestClient(create_app(config)) as c:
        r = c.post(
            EVENT_URL + "?token=in-sekrit",
            content=b'{"event": "a", "note": "in-sekrit rd-sekrit',
            headers={**JSON, "User-Agent": "probe in-sekrit"},
        )
        assert r.status_code == 400
        [record] = rejections(c, token="rd-sekrit")
    assert record["body"] == '{"event": "a", "note": "[redacted] [redacted]'
    assert record["user_agent"] == "probe [redacted]"
    written = config.rejected_file
    assert written is not None
    assert "sekrit" not in written.read_text()


def test_base64_bodies_are_cut_at_4_kib_after_decoding() -> None:
    quarantine = Quarantine(10, None)
    batch = [{"event": "$x", "n": i, "pad": "p" * 40} for i in range(200)]
    payload = orjson.dumps({"api_key": "phc_x", "batch": batch})
    for raw in (
        base64.b64encode(gzip.compress(payload)),
        b"data=" + base64.b64encode(payload),
    ):
        assert len(raw) < len(payload) or raw.startswith(b"data=")
        found = quarantine.record(Request("/posthog/batch/", 400, "bad", [], raw, None))
        assert found is not None
        record = orjson.loads(found.line)
        assert record["truncated"] is True
        assert len(record["body"].encode()) == BODY_LIMIT
        assert record["body"].startswith('{"batch":[{"event":"$x","n":0,')
        assert "phc_x" not in record["body"]


def test_posthog_form_base64_and_gzip_bodies_are_decoded() -> None:
    quarantine = Quarantine(10, None)
    payload = orjson.dumps({"api_key": "phc_x", "event": "$pageview", "x": 1})
    for raw in (
        b"data=" + base64.b64encode(payload),
        base64.b64encode(gzip.compress(payload)),
        b"data=" + base64.urlsafe_b64encode(payload).rstrip(b"="),
    ):
        found = quarantine.record(Request("/posthog/e", 400, "bad", [], raw, None))
        assert found is not None
        record = orjson.loads(found.line)
        assert orjson.loads(record["body"]) == {"event": "$pageview", "x": 1}, raw
        assert record["event"] == "$pageview"


# --- live: /wait rejected=true and the stream -----------------------------------------


def test_wait_rejected_is_woken_by_a_refusal(config: Config) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> list[httpx.Response]:
        waiting = asyncio.ensure_future(
            c.get(
                WAIT_URL,
                params={"rejected": "true", "event": "checkout", "timeout": 10},
            )
        )
        while app.service.hub.counts[0] == 0:
            await asyncio.sleep(0.01)
        await c.post(EVENT_URL, content=b"{", headers=JSON)  # another refusal
        posted = await c.post(EVENT_URL, json=event("checkout", bad=1))
        return [posted, await waiting]

    posted, waited = run_app(config, body)
    assert posted.status_code == 422
    assert waited.status_code == 200
    body_ = waited.json()
    assert body_["matched"] == 1
    [record] = body_["rejections"]
    assert record["event"] == "checkout" and record["detail"] == posted.json()["detail"]


def test_wait_rejected_absent_and_timeout(client: TestClient) -> None:
    params = {"rejected": "true", "absent": "true", "timeout": 0.05}
    r = client.get(WAIT_URL, params=params)
    assert r.status_code == 200
    assert r.json() == {"matched": 0, "rejections": []}
    client.post(EVENT_URL, json=event("x", bad=1))
    r = client.get(WAIT_URL, params=params)
    assert r.status_code == 409
    assert r.json()["matched"] == 1
    r = client.get(WAIT_URL, params={**params, "status": 400})
    assert r.status_code == 200
    r = client.get(WAIT_URL, params={"rejected": "true", "count": 2, "timeout": 0.05})
    assert r.status_code == 408
    assert r.json()["matched"] == 1


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"rejected": "true", "exactly": "true"}, "exactly"),
        ({"rejected": "true", "sequence": "a,b"}, "sequence"),
        ({"rejected": "true", "meta.plan": "pro"}, "meta.plan"),
        ({"rejected": "true", "since": "2026-01-01"}, "since"),
        ({"rejected": "true", "absent": "true", "count": 2}, "count"),
        ({"rejected": "true", "count": 501}, "count"),
        ({"rejected": "maybe"}, "rejected"),
        ({"status": 422}, "status"),
    ],
)
def test_wait_rejected_refuses_what_makes_no_sense(
    client: TestClient, params: dict[str, Any], name: str
) -> None:
    r = client.get(WAIT_URL, params={**params, "timeout": 0})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", name]


def test_stream_carries_rejections_unless_opted_out(config: Config) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> list[bytes]:
        service = app.service
        stream: AsyncIterator[bytes] = events(
            service.hub,
            service.ring,
            _filters(),
            rejections=RejectionFilters(events=frozenset({"checkout"})),
        )
        chunks = [await anext(stream)]  # connected: subscribed
        await c.post(EVENT_URL, json=event("page_view", bad=1))  # not matching
        await c.post(EVENT_URL, json=event("checkout", bad=1))
        await c.post(EVENT_URL, json=event("checkout"))
        chunks.append(await anext(stream))
        if b"event: behavior" not in b"".join(chunks):
            chunks.append(await anext(stream))
        await stream.aclose()
        return chunks

    chunks = b"".join(run_app(config, body))
    rejected = [m for m in chunks.split(b"\n\n") if b"event: rejected" in m]
    assert len(rejected) == 1
    [data] = [line for line in rejected[0].split(b"\n") if line.startswith(b"data: ")]
    assert orjson.loads(data[6:])["event"] == "checkout"
    assert b"id: " not in rejected[0]
    assert b"event: behavior" in chunks


def test_stream_param_rejected(client: TestClient) -> None:
    r = client.get("/api/metrics/behavior/stream", params={"rejected": "nope"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["query", "rejected"]


def test_rejected_false_subscribes_to_no_rejection(config: Config) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> int:
        hub = app.service.hub
        stream = events(hub, app.service.ring, _filters())
        await anext(stream)
        count = len(hub._rejection_subs)
        await stream.aclose()
        return count

    assert run_app(config, body) == 0


def _filters() -> Filters:
    return Filters()


def test_quarantine_file_ids_continue_from_segments(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    segment = tmp_path / "r-20260101T000000-1.jsonl"
    segment.write_bytes(b'{"id":1}\n{"id":7}\n')
    quarantine = Quarantine(5, path)
    quarantine.start()
    found = quarantine.record(Request("/p", 400, "x", [], None, None))
    quarantine.close()
    assert found is not None and found.id == 8
    assert os.path.getsize(path) > 0


def test_the_cli_names_a_clashing_rejected_file_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = tmp_path / "m.jsonl"
    monkeypatch.setenv("METRICS_REJECT_JSONL", str(sink))
    code = main(["serve", "--jsonl", str(sink), "--port", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        f"metrics-service: error: METRICS_REJECT_JSONL: {sink} is the sink itself"
        " (METRICS_JSONL)\n"
    )


def test_a_body_with_nothing_to_hide_is_kept_as_sent() -> None:
    quarantine = Quarantine(10, None, redact_keys=["email"])
    sent = b'{ "visitor_id": "visitor-1",  "event": "a" }'
    found = quarantine.record(Request("/p", 422, "x", [], sent, None))
    assert found is not None
    assert orjson.loads(found.line)["body"] == sent.decode()


@pytest.mark.parametrize(
    "sent",
    [
        b'{"metadata": {"api\\u005fkey": "k1", "EMAIL": "e"}, "event": "a"}',
        '{"metadata": {"api_key": "k1", "EMAIL": "e", "t": "\u00e9"}, "event": "a"}'.encode(),
        '{"metadata": {"TO\u212aEN": "k1", "EMAIL": "e"}, "event": "a"}'.encode(),
    ],
)
def test_escaped_or_non_ascii_keys_are_still_hidden(sent: bytes) -> None:
    quarantine = Quarantine(10, None, redact_keys=["email"])
    found = quarantine.record(Request("/p", 422, "x", [], sent, None))
    assert found is not None
    body = orjson.loads(orjson.loads(found.line)["body"])
    assert "k1" not in str(body)
    assert body["metadata"]["EMAIL"] == "[redacted]"
