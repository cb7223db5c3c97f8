"""GET /api/metrics/behavior/wait: its bounds (count, waiters) and clients that leave."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx

from metrics_service.app import App, create_app
from metrics_service.settings import Config

WAIT = "/api/metrics/behavior/wait"
STREAM = "/api/metrics/behavior/stream"


def event(visitor: str = "visitor-1") -> dict[str, Any]:
    return {"event": "x", "visitor_id": visitor}


def run_app(
    config: Config, body: Callable[[App, httpx.AsyncClient], Coroutine[Any, Any, Any]]
) -> Any:
    async def run() -> Any:
        app = create_app(config)
        app.service.start()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return await body(app, c)
        finally:
            await app.service.stop()

    return asyncio.run(run())


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
