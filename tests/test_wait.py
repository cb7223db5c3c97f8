"""GET /api/metrics/behavior/wait: its bounds (count, waiters) and clients that leave."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import run_app

from metrics_service.app import App
from metrics_service.settings import Config
from metrics_service.store import quarantine as quarantine_module

WAIT = "/api/metrics/behavior/wait"
STREAM = "/api/metrics/behavior/stream"


def event(visitor: str = "visitor-1") -> dict[str, Any]:
    return {"event": "x", "visitor_id": visitor}


def test_count_above_the_ring_capacity_is_422(tmp_path: Path) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> httpx.Response:
        return await c.get(WAIT, params={"count": 1_000_000_000, "timeout": 4})

    config = Config(jsonl=tmp_path / "m.jsonl", ring_capacity=100)
    response = run_app(config, body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", "count"]
    assert "100" in error["msg"] and "METRICS_RING_CAPACITY" in error["msg"]


def test_a_wait_answers_at_most_the_rings_capacity(tmp_path: Path) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> httpx.Response:
        waiting = asyncio.ensure_future(
            c.get(WAIT, params={"count": 100, "timeout": 10})
        )
        while app.service.hub.counts[0] == 0:
            await asyncio.sleep(0.01)
        for _ in range(5):
            posted = await c.post("/api/metrics/events", json=[event()] * 1000)
            assert posted.status_code == 202
        return await waiting

    config = Config(jsonl=tmp_path / "m.jsonl", ring_capacity=100)
    response = run_app(config, body)
    assert response.status_code == 200
    found = response.json()
    assert found["matched"] == 100
    assert [e["seq"] for e in found["events"]] == list(range(901, 1001))


def test_waits_and_streams_beyond_max_waiters_get_503_retry_after(
    tmp_path: Path,
) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> list[httpx.Response]:
        parked = [
            asyncio.ensure_future(c.get(WAIT, params={"timeout": 10})) for _ in range(2)
        ]
        while app.service.hub.counts[0] < 2:
            await asyncio.sleep(0.01)
        refused = [await c.get(WAIT, params={"timeout": 10}), await c.get(STREAM)]
        await c.post("/api/metrics/event", json=event())
        return refused + list(await asyncio.gather(*parked))

    config = Config(jsonl=tmp_path / "m.jsonl", max_waiters=2)
    wait, stream, *parked = run_app(config, body)
    for refused in (wait, stream):
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "METRICS_MAX_WAITERS" in refused.json()["detail"]
    assert [r.status_code for r in parked] == [200, 200]


def test_a_wait_whose_client_left_is_dropped_at_once(tmp_path: Path) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> tuple[list[Any], float]:
        gone = asyncio.Event()
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            if not sent:
                sent.append("request")
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": WAIT,
            "raw_path": WAIT.encode(),
            "root_path": "",
            "query_string": b"timeout=60&meta.k=nomatch",
            "headers": [(b"host", b"t")],
            "client": ("127.0.0.1", 1),
            "server": ("t", 80),
            "app": app,
        }
        loop = asyncio.get_running_loop()
        started = loop.time()
        call = asyncio.ensure_future(app(scope, receive, send))  # type: ignore[arg-type]
        while app.service.hub.counts[0] == 0:
            await asyncio.sleep(0.01)
        gone.set()
        await asyncio.wait_for(call, 5)
        return [app.service.hub.counts], loop.time() - started

    counts, took = run_app(Config(jsonl=tmp_path / "m.jsonl"), body)
    assert counts == [(0, 0)]
    assert took < 5


def named(name: str, visitor: str = "visitor-1") -> dict[str, Any]:
    return {"event": name, "visitor_id": visitor}


def post_then_wait(
    tmp_path: Path,
    before: list[dict[str, Any]],
    params: dict[str, Any],
    later: list[dict[str, Any]] | None = None,
    delay: float = 0.05,
) -> httpx.Response:
    """Posts `before`, asks /wait with `params`, posts `later` after `delay` while it
    waits (or is already answered)."""

    async def body(app: App, c: httpx.AsyncClient) -> httpx.Response:
        for item in before:
            assert (await c.post("/api/metrics/event", json=item)).status_code == 202
        waiting = asyncio.ensure_future(c.get(WAIT, params=params))
        await asyncio.sleep(delay)
        for item in later or []:
            assert (await c.post("/api/metrics/event", json=item)).status_code == 202
        return await waiting

    return run_app(Config(jsonl=tmp_path / "m.jsonl"), body)


def test_absent_is_200_when_nothing_matching_arrives(tmp_path: Path) -> None:
    params = {"event": "error", "absent": "true", "timeout": 0.2}
    response = post_then_wait(tmp_path, [named("page_view")], params, [named("click")])
    assert response.status_code == 200
    assert response.json() == {"matched": 0, "events": []}


def test_absent_is_409_with_what_is_already_in_the_ring(tmp_path: Path) -> None:
    params = {"event": "error", "absent": "true", "after": 1, "timeout": 5}
    before = [named("error"), named("page_view"), named("error", "visitor-2")]
    response = post_then_wait(tmp_path, before, params, delay=0)
    assert response.status_code == 409
    body = response.json()
    assert body["matched"] == 1
    assert [(e["seq"], e["visitor_id"]) for e in body["events"]] == [(3, "visitor-2")]


def test_absent_is_409_as_soon_as_one_arrives(tmp_path: Path) -> None:
    params = {"event": "error", "absent": "true", "timeout": 30}
    response = post_then_wait(tmp_path, [], params, [named("x"), named("error")])
    assert response.status_code == 409
    assert [e["seq"] for e in response.json()["events"]] == [2]


def test_exactly_is_200_after_quiet(tmp_path: Path) -> None:
    params = {"event": "signup", "count": 2, "exactly": "true", "settle": 0.1}
    before = [named("signup"), named("page_view"), named("signup")]
    response = post_then_wait(tmp_path, before, params, [named("page_view")])
    assert response.status_code == 200
    assert [e["seq"] for e in response.json()["events"]] == [1, 3]


def test_exactly_is_409_when_one_more_arrives_while_settling(tmp_path: Path) -> None:
    params = {"event": "signup", "count": 1, "exactly": "true", "settle": 0.5}
    response = post_then_wait(tmp_path, [named("signup")], params, [named("signup")])
    assert response.status_code == 409
    body = response.json()
    assert body["matched"] == 2
    assert [e["seq"] for e in body["events"]] == [1, 2]


def test_exactly_is_409_when_more_are_already_in(tmp_path: Path) -> None:
    params = {"event": "signup", "count": 1, "exactly": "true", "settle": 5}
    response = post_then_wait(tmp_path, [named("signup")] * 3, params, delay=0)
    assert response.status_code == 409
    assert response.json()["matched"] == 3


def test_exactly_times_out_with_408_like_a_wait(tmp_path: Path) -> None:
    params = {"event": "signup", "count": 2, "exactly": "true", "timeout": 0.1}
    response = post_then_wait(tmp_path, [named("signup")], params, delay=0)
    assert response.status_code == 408
    assert response.json()["matched"] == 1


def test_sequence_is_200_with_the_events_forming_it(tmp_path: Path) -> None:
    params = {"sequence": "page_view,signup_start,signup_done", "timeout": 5}
    before = [named("signup_start"), named("page_view"), named("page_view")]
    later = [named("other"), named("signup_start"), named("signup_done")]
    response = post_then_wait(tmp_path, before, params, later)
    assert response.status_code == 200
    body = response.json()
    assert body["matched"] == 3
    assert [e["seq"] for e in body["events"]] == [2, 5, 6]


def test_sequence_per_visitor_needs_one_visitor_to_do_it_all(tmp_path: Path) -> None:
    params = {"sequence": "a,b", "per": "visitor_id", "timeout": 5}
    before = [named("a", "visitor-1"), named("b", "visitor-2")]
    later = [named("a", "visitor-2"), named("b", "visitor-2")]
    response = post_then_wait(tmp_path, before, params, later)
    assert response.status_code == 200
    assert [e["seq"] for e in response.json()["events"]] == [3, 4]


def test_sequence_per_metadata_path(tmp_path: Path) -> None:
    def step(name: str, session: str) -> dict[str, Any]:
        return {**named(name), "metadata": {"session": session}}

    params = {"sequence": "a,b", "per": "meta.session", "timeout": 0.2}
    before = [step("a", "s1"), step("b", "s2"), named("b")]
    response = post_then_wait(tmp_path, before, params, delay=0)
    assert response.status_code == 408
    assert [e["seq"] for e in response.json()["events"]] == [1, 2, 3]
    before.append(step("b", "s1"))
    assert post_then_wait(tmp_path / "x", before, params).status_code == 200


def test_sequence_out_of_order_is_408_with_what_arrived(tmp_path: Path) -> None:
    params = {"sequence": "a,b", "after": 1, "timeout": 0.2}
    before = [named("a"), named("b"), named("x"), named("b"), named("a")]
    response = post_then_wait(tmp_path, before, params, delay=0)
    assert response.status_code == 408
    body = response.json()
    assert body["matched"] == 3
    assert [(e["seq"], e["event"]) for e in body["events"]] == [
        (2, "b"),
        (4, "b"),
        (5, "a"),
    ]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"absent": "true", "count": 2}, "count"),
        ({"absent": "true", "exactly": "true"}, "exactly"),
        ({"absent": "true", "sequence": "a,b"}, "sequence"),
        ({"absent": "yes"}, "absent"),
        ({"sequence": "a,b", "exactly": "true"}, "exactly"),
        ({"sequence": "a,b", "count": 2}, "count"),
        ({"sequence": "a,b", "event": "a"}, "event"),
        ({"sequence": "a,,b"}, "sequence"),
        ({"sequence": "a,b", "per": "visitor"}, "per"),
        ({"per": "visitor_id"}, "per"),
        ({"settle": 0.1}, "settle"),
        ({"exactly": "true", "settle": 2, "timeout": 1}, "settle"),
        ({"exactly": "true", "count": 1001}, "count"),
    ],
)
def test_invalid_combinations_are_422_naming_the_parameter(
    tmp_path: Path, params: dict[str, Any], name: str
) -> None:
    async def body(app: App, c: httpx.AsyncClient) -> httpx.Response:
        return await c.get(WAIT, params=params)

    response = run_app(Config(jsonl=tmp_path / "m.jsonl", ring_capacity=1000), body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", name]


# --- rejected=true: refusals recorded in batches --------------------------------------


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"absent": "true"}, 409),
        ({"count": 1}, 200),
    ],
)
def test_a_refusal_answered_during_a_rejected_wait_counts_even_if_not_yet_batched(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    params: dict[str, Any],
    status: int,
) -> None:
    # A refusal in a wait's last 10 ms is recorded after the wait's timeout: the wait
    # settles the batch before it answers, as every read does.
    async def body(app: App, c: httpx.AsyncClient) -> tuple[int, httpx.Response]:
        quarantine = app.service.quarantine
        monkeypatch.setattr(quarantine_module, "FLUSH_EVERY", 1.0)
        quarantine.flushed = asyncio.get_running_loop().time()
        query = {"rejected": "true", "timeout": 0.2, **params}
        waiting = asyncio.ensure_future(c.get(WAIT, params=query))
        while app.service.hub.counts[0] == 0:
            await asyncio.sleep(0.01)
        refused = await c.post("/api/metrics/event", json={"event": "x"})
        return refused.status_code, await waiting

    refused, response = run_app(Config(jsonl=tmp_path / "m.jsonl"), body)
    assert refused == 422
    assert response.status_code == status
    body_ = response.json()
    assert body_["matched"] == 1
    assert [r["event"] for r in body_["rejections"]] == ["x"]
