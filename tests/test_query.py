from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from metrics_service.app import create_app
from metrics_service.read.filters import Filters
from metrics_service.read.hub import Hub, ShuttingDown
from metrics_service.settings import Config
from metrics_service.store.chunk import Entry
from metrics_service.testing import MetricsServer

SNAPSHOT = "/api/metrics/behavior"
WAIT = "/api/metrics/behavior/wait"
SERIES = "/api/metrics/behavior/timeseries"


def event(name: str, visitor: str = "visitor-1", **extra: Any) -> dict[str, Any]:
    return {"event": name, "visitor_id": visitor, **extra}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as c:
        yield c


@pytest.fixture
def loaded(client: TestClient) -> TestClient:
    events = [
        event(
            "page_view",
            "visitor-a",
            timestamp="2026-01-01T10:00:00Z",
            metadata={"path": "/", "step": 2},
        ),
        event(
            "signup",
            "visitor-a",
            timestamp="2026-01-01T10:05:00Z",
            event_id="sig-1",
            metadata={"plan": "pro", "step": "2", "user": {"tier": {"level": 3}}},
        ),
        event(
            "page_view",
            "visitor-b",
            timestamp="2026-01-01T11:00:00Z",
            metadata={"path": "/pricing", "flag": True},
        ),
        event(
            "link_click",
            "visitor-b",
            timestamp="2026-01-02T09:00:00Z",
            metadata={"plan": "free", "flag": None},
        ),
    ]
    for body in events:
        response = client.post("/api/metrics/event", json=body)
        assert response.status_code == 202, response.text
    return client


def seqs(client: TestClient, params: Any) -> list[int]:
    response = client.get(SNAPSHOT, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    found = [e["seq"] for e in body["last_events"]]
    assert body["total"] == len(found)
    assert sum(item["count"] for item in body["by_event"]) == len(found)
    return sorted(found)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"event": "page_view"}, [1, 3]),
        ([("event", "signup"), ("event", "link_click")], [2, 4]),
        ({"visitor_id": "visitor-b"}, [3, 4]),
        ({"event_id": "sig-1"}, [2]),
        ({"since": "2026-01-01T10:05:00Z"}, [2, 3, 4]),
        ({"until": "2026-01-01T10:05:00Z"}, [1, 2]),
        ({"since": "2026-01-01T12:01:00+02:00"}, [2, 3, 4]),
        ({"since": "2026-01-01T11:00:00"}, [3, 4]),
        ({"since": "2026-01-01T12:01:00 02:00"}, [2, 3, 4]),  # an unescaped +
        ({"after": "2"}, [3, 4]),
        ({"meta.plan": "pro"}, [2]),
        ({"meta.step": "2"}, [1, 2]),
        ({"meta.user.tier.level": "3"}, [2]),
        ({"meta.flag": "true"}, [3]),
        ({"meta.flag": "null"}, [4]),
        ({"meta.path": "/nowhere"}, []),
    ],
)
def test_each_filter_alone(
    loaded: TestClient, params: Any, expected: list[int]
) -> None:
    assert seqs(loaded, params) == expected


def test_filters_combine_with_and(loaded: TestClient) -> None:
    assert seqs(loaded, {"event": "page_view", "visitor_id": "visitor-b"}) == [3]
    assert seqs(loaded, {"meta.step": "2", "after": "1"}) == [2]
    assert seqs(
        loaded,
        [
            ("event", "page_view"),
            ("event", "signup"),
            ("since", "2026-01-01T10:01:00Z"),
            ("until", "2026-01-01T12:00:00Z"),
            ("meta.plan", "pro"),
        ],
    ) == [2]


def test_filtered_snapshot_counts_only_matches(loaded: TestClient) -> None:
    response = loaded.get(SNAPSHOT, params={"visitor_id": "visitor-b", "limit": 1})
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 2
    assert body["by_event"] == [
        {"event": "link_click", "count": 1},
        {"event": "page_view", "count": 1},
    ]
    assert [e["seq"] for e in body["last_events"]] == [4]
    assert body["last_seq"] == 4


@pytest.mark.parametrize(
    ("path", "params", "name"),
    [
        (SNAPSHOT, {"evnt": "page_view"}, "evnt"),
        (SNAPSHOT, {"since": "yesterday"}, "since"),
        (SNAPSHOT, {"until": "2026-13-01"}, "until"),
        (SNAPSHOT, {"after": "x"}, "after"),
        (SNAPSHOT, {"meta.": "x"}, "meta."),
        (SNAPSHOT, [("visitor_id", "a"), ("visitor_id", "b")], "visitor_id"),
        (WAIT, {"count": "0", "timeout": "0"}, "count"),
        (WAIT, {"timeout": "61"}, "timeout"),
        (WAIT, {"timeout": "soon"}, "timeout"),
        (WAIT, {"limit": "3"}, "limit"),
        (SERIES, {"interval": "2m"}, "interval"),
        (SERIES, {"visitor": "x"}, "visitor"),
    ],
)
def test_bad_params_are_422_naming_them(
    client: TestClient, path: str, params: Any, name: str
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert [item["loc"] for item in response.json()["detail"]] == [["query", name]]


def test_reset_empties_ring_and_keeps_file(loaded: TestClient, tmp_path: Path) -> None:
    before = (tmp_path / "m.jsonl").read_bytes()
    response = loaded.delete(SNAPSHOT)
    assert response.status_code == 200
    assert response.json() == {"ok": True, "cleared": 4}
    body = loaded.get(SNAPSHOT).json()
    assert (body["total"], body["by_event"], body["last_events"]) == (0, [], [])
    assert body["last_seq"] == 4
    assert (tmp_path / "m.jsonl").read_bytes() == before
    assert len(before.splitlines()) == 4
    response = loaded.post("/api/metrics/event", json=event("after_reset"))
    assert response.json()["seq"] == 5


def test_concurrent_tests_isolate_with_after(tmp_path: Path) -> None:
    """Two 'tests' share one server; each marks last_seq and filters with after=."""
    with MetricsServer(tmp_path / "m.jsonl") as server:
        results: dict[str, list[str]] = {}
        start = threading.Barrier(2)

        def one_test(name: str) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                mark = http.get(SNAPSHOT, params={"limit": 0}).json()["last_seq"]
                start.wait(timeout=30)
                for i in range(20):
                    body = event(f"{name}_step", metadata={"i": i})
                    assert http.post("/api/metrics/event", json=body).status_code == 202
                got = http.get(
                    WAIT,
                    params={"after": mark, "event": f"{name}_step", "count": 20},
                ).json()
                mine = http.get(SNAPSHOT, params={"after": mark, "limit": 1000}).json()
                # Everything after the mark: mine plus whatever the other test posted.
                results[name] = [e["event"] for e in got["events"]]
                results[name + "_all"] = [e["event"] for e in mine["last_events"]]

        threads = [threading.Thread(target=one_test, args=(n,)) for n in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results["a"] == ["a_step"] * 20
        assert results["b"] == ["b_step"] * 20
        # Without the event filter the other test's events do leak in: the mark alone
        # isolates from earlier tests, the name/visitor filter from concurrent ones.
        assert set(results["a_all"]) >= {"a_step"}


def test_wait_returns_existing_matches_at_once(loaded: TestClient) -> None:
    response = loaded.get(WAIT, params={"event": "page_view", "count": 2})
    assert response.status_code == 200
    body = response.json()
    assert body["matched"] == 2
    assert [e["seq"] for e in body["events"]] == [1, 3]


def test_wait_times_out_with_408_and_partial_matches(loaded: TestClient) -> None:
    started = time.monotonic()
    response = loaded.get(
        WAIT, params={"event": "page_view", "count": 3, "timeout": "0.3"}
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 408
    body = response.json()
    assert body["matched"] == 2
    assert [e["event"] for e in body["events"]] == ["page_view", "page_view"]
    assert 0.3 <= elapsed < 30


def test_wait_woken_by_event_posted_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A waiter answers right after the POST's 202, without polling."""

    async def run(url: str) -> tuple[httpx.Response, float]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            mark = (await http.get(SNAPSHOT)).json()["last_seq"]
            answered: list[float] = []

            async def waiter() -> httpx.Response:
                response = await http.get(
                    WAIT,
                    params={
                        "event": "checkout",
                        "meta.plan": "pro",
                        "after": mark,
                        "timeout": 10,
                    },
                )
                answered.append(time.perf_counter())
                return response

            task = asyncio.create_task(waiter())
            await asyncio.sleep(0.2)  # the scenario: the event arrives 200 ms later
            assert not task.done()
            sent = time.perf_counter()
            posted = await http.post(
                "/api/metrics/event",
                json=event("checkout", metadata={"plan": "pro"}),
            )
            accepted = time.perf_counter()
            assert posted.status_code == 202
            response = await asyncio.wait_for(task, 30)
            return response, (answered[0] - sent, answered[0] - accepted)

    with MetricsServer(tmp_path / "m.jsonl") as server:
        response, (from_send, from_202) = asyncio.run(run(server.url))
    with capsys.disabled():  # shown in every run, not only on failure
        # The waiter is released inside the flush, before the POST's own answer is
        # written, so it usually lands first: POST 202 -> wait answer is often < 0.
        print(
            f"\nwait latency: POST 202 -> wait answer {from_202 * 1000:+.1f} ms;"
            f" POST sent -> wait answer {from_send * 1000:.1f} ms"
        )
    assert response.status_code == 200
    assert response.json()["matched"] == 1
    assert response.json()["events"][0]["metadata"] == {"plan": "pro"}
    assert from_send < 5  # sanity only: a poll loop would also pass this on a busy box


@pytest.mark.slow
def test_many_waiters_all_released(tmp_path: Path) -> None:
    async def run(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            waits = [
                asyncio.create_task(
                    http.get(
                        WAIT, params={"visitor_id": f"visitor-{i:03d}", "timeout": 30}
                    )
                )
                for i in range(200)
            ]
            batch = [event("x", f"visitor-{i:03d}") for i in range(200)]
            posted = await http.post("/api/metrics/events", json=batch)
            assert posted.status_code == 202, posted.text
            return list(await asyncio.gather(*waits))

    with MetricsServer(tmp_path / "m.jsonl") as server:
        answers = asyncio.run(run(server.url))
    assert [r.status_code for r in answers] == [200] * 200
    assert [r.json()["events"][0]["visitor_id"] for r in answers] == [
        f"visitor-{i:03d}" for i in range(200)
    ]


def test_hub_releases_a_thousand_waiters_from_the_listener() -> None:
    class FakeCollector:
        listeners: list[Any] = []

        def subscribe(self, listener: Any) -> Any:
            self.listeners.append(listener)

    async def run() -> tuple[list[tuple[bool, list[Entry]]], tuple[int, int]]:
        collector = FakeCollector()
        hub = Hub(collector)  # type: ignore[arg-type]
        waits = [
            asyncio.ensure_future(
                hub.wait(Filters(visitor_id=f"visitor-{i}"), 2, [], timeout=30)
            )
            for i in range(1000)
        ]
        await asyncio.sleep(0)  # let every waiter register
        registered = hub.counts
        seq = 0
        for _ in range(2):
            batch = []
            for i in range(1000):
                seq += 1
                batch.append(Entry(seq, 0.0, "x", f"visitor-{i}", None, b"{}"))
            for listener in collector.listeners:
                listener(batch)
        return list(await asyncio.gather(*waits)), registered

    results, registered = asyncio.run(run())
    assert registered == (1000, 0)
    assert all(done for done, _ in results)
    assert [[e.visitor_id for e in events] for _, events in results][7] == [
        "visitor-7",
        "visitor-7",
    ]


def test_timeseries_buckets_across_an_empty_gap(client: TestClient) -> None:
    times = [
        ("page_view", "2026-03-01T10:00:05Z"),
        ("page_view", "2026-03-01T10:00:59Z"),
        ("signup", "2026-03-01T10:00:30Z"),
        ("page_view", "2026-03-01T10:03:10Z"),
    ]
    for name, stamp in times:
        client.post("/api/metrics/event", json=event(name, timestamp=stamp))
    response = client.get(SERIES, params={"interval": "1m"})
    assert response.status_code == 200
    assert response.json() == {
        "interval": "1m",
        "buckets": [
            {
                "start": "2026-03-01T10:00:00Z",
                "total": 3,
                "by_event": {"page_view": 2, "signup": 1},
            },
            {"start": "2026-03-01T10:01:00Z", "total": 0, "by_event": {}},
            {"start": "2026-03-01T10:02:00Z", "total": 0, "by_event": {}},
            {"start": "2026-03-01T10:03:00Z", "total": 1, "by_event": {"page_view": 1}},
        ],
    }
    filtered = client.get(SERIES, params={"interval": "1h", "event": "signup"})
    assert filtered.json()["buckets"] == [
        {"start": "2026-03-01T10:00:00Z", "total": 1, "by_event": {"signup": 1}}
    ]


def test_timeseries_default_interval_and_empty_ring(client: TestClient) -> None:
    response = client.get(SERIES)
    assert response.status_code == 200
    assert response.json() == {"interval": "1m", "buckets": []}


def test_timeseries_clips_to_the_newest_buckets_and_counts_the_rest(
    client: TestClient,
) -> None:
    stamps = ("1970-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:02Z")
    for stamp in stamps:
        client.post("/api/metrics/event", json=event("x", timestamp=stamp))
    response = client.get(SERIES, params={"interval": "1s"})
    assert response.status_code == 200
    answer = response.json()
    assert answer["clipped"] == 1  # the event with the bad clock
    buckets = answer["buckets"]
    assert len(buckets) == 10_000
    assert buckets[-1] == {
        "start": "2026-01-01T00:00:02Z",
        "total": 1,
        "by_event": {"x": 1},
    }
    assert sum(bucket["total"] for bucket in buckets) == 2
    daily = client.get(SERIES, params={"interval": "1d"}).json()
    assert daily["clipped"] == 1 and len(daily["buckets"]) == 10_000
    assert "clipped" not in client.get(SERIES, params={"since": "2000-01-01"}).json()


def test_closing_the_hub_releases_pending_waiters() -> None:
    class FakeCollector:
        def subscribe(self, listener: Any) -> None:
            pass

    async def run() -> None:
        hub = Hub(FakeCollector())  # type: ignore[arg-type]
        pending = asyncio.ensure_future(hub.wait(Filters(), 1, [], timeout=60))
        await asyncio.sleep(0)
        assert hub.counts == (1, 0)
        hub.close()  # what SIGTERM triggers in a real server
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(pending, 10)
        with pytest.raises(ShuttingDown):  # and new ones are refused
            await hub.wait(Filters(), 1, [], timeout=60)

    asyncio.run(run())
