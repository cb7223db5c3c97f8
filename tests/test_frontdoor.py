from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from metrics_service.http.errors import ApiError
from metrics_service.http.frontdoor import FrontDoor
from metrics_service.http.openapi import Doc, Endpoint
from metrics_service.settings import Config


def scope(
    headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b""
) -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": "/api/metrics/event",
        "root_path": "",
        "query_string": query,
        "headers": headers or [],
    }


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    body = await Request(scope, receive).body()
    headers = [(b"x-query", scope["query_string"]), *scope.get("extra", [])]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run(
    app: Any, scope: Scope, messages: list[Message], *, pause: bool = False
) -> list[Message]:
    """Call `app`; with `pause`, every receive() waits a loop turn before answering."""
    sent: list[Message] = []

    async def main() -> None:
        queue = list(messages)
        never = asyncio.Event()

        async def receive() -> Message:
            if pause:
                await asyncio.sleep(0)
            if queue:
                return queue.pop(0)
            await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await asyncio.wait_for(app(scope, receive, send), 10)

    asyncio.run(main())
    return sent


NO_DOC = Doc("", {})


def edge(tmp_path: Path, **settings: Any) -> FrontDoor:
    return FrontDoor(
        echo, config=Config(jsonl=tmp_path / "m.jsonl", **settings), endpoints=()
    )


@pytest.mark.parametrize("pause", [False, True])
def test_a_body_in_pieces_arrives_whole(tmp_path: Path, pause: bool) -> None:
    pieces = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"def", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": False},
    ]
    sent = run(edge(tmp_path), scope(), pieces, pause=pause)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"abcdef"


def test_a_body_that_stops_arriving_times_out(tmp_path: Path) -> None:
    app = edge(tmp_path, body_timeout=0.05)
    piece = {"type": "http.request", "body": b"abc", "more_body": True}
    sent = run(app, scope(), [piece])
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b"did not arrive within 0.05 s" in sent[1]["body"]


def test_waiting_for_the_disconnect_after_the_body_is_not_timed(
    tmp_path: Path,
) -> None:
    async def listens(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the (empty) body
        await asyncio.sleep(0.1)  # longer than the deadline
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["type"].encode()})

    sent: list[Message] = []
    queue: list[Message] = [{"type": "http.request", "body": b""}]

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(0.01)  # really waits, past the deadline
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    config = Config(jsonl=tmp_path / "m.jsonl", body_timeout=0.05)
    app = FrontDoor(listens, config=config, endpoints=())
    stream = {**scope(), "method": "GET", "path": "/api/metrics/behavior/stream"}
    asyncio.run(asyncio.wait_for(app(stream, receive, send), 10))
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"http.disconnect"


def test_a_client_that_left_mid_body_ends_quietly(tmp_path: Path) -> None:
    messages = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert run(edge(tmp_path), scope(), messages, pause=True) == []


def test_without_origin_the_answer_varies_on_origin(tmp_path: Path) -> None:
    sent = run(edge(tmp_path), scope(), [{"type": "http.request", "body": b"x"}])
    assert sent[0]["status"] == 200
    assert (b"vary", b"Origin") in sent[0]["headers"]
    assert not any(k.startswith(b"access-control") for k, _ in sent[0]["headers"])


def test_an_existing_vary_header_is_extended(tmp_path: Path) -> None:
    request = scope()
    request["extra"] = [(b"vary", b"Accept")]
    sent = run(edge(tmp_path), request, [{"type": "http.request", "body": b"x"}])
    assert sent[0]["status"] == 200
    assert [v for k, v in sent[0]["headers"] if k == b"vary"] == [b"Accept, Origin"]


def test_an_allowed_origin_gets_cors_headers(tmp_path: Path) -> None:
    app = edge(tmp_path, cors_origins=("http://app.test",))
    request = scope([(b"origin", b"http://app.test")])
    sent = run(app, request, [{"type": "http.request", "body": b"x"}])
    assert sent[0]["status"] == 200
    headers = dict(sent[0]["headers"])
    assert headers[b"access-control-allow-origin"] == b"http://app.test"


def test_a_token_parameter_is_scrubbed_without_tokens(tmp_path: Path) -> None:
    request = scope(query=b"limit=5&token=abc")
    sent = run(edge(tmp_path), request, [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 200
    assert dict(sent[0]["headers"])[b"x-query"] == b"limit=5"


class Refuse:
    """A lane that refuses every body."""

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, vary: bool
    ) -> None:
        raise ApiError(415, "no")


def test_a_lane_serves_posts_to_its_path(tmp_path: Path) -> None:
    lane = Endpoint("POST", "/x", Refuse(), "ingest", NO_DOC)
    app = FrontDoor(echo, config=Config(jsonl=tmp_path / "m.jsonl"), endpoints=[lane])
    request = scope()
    request["path"], request["app"] = "/x", Starlette()
    sent = run(app, request, [{"type": "http.request", "body": b""}])
    assert sent[0]["status"] == 415
    assert sent[1]["body"] == b'{"detail":"no"}'
    request = scope()
    request["path"], request["method"] = "/x", "GET"
    sent = run(app, request, [{"type": "http.request", "body": b"y"}])
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"y"


# --- Origin on ingest paths (hardening 9) --------------------------------------------


def cors_client(tmp_path: Path, origins: tuple[str, ...]) -> Any:
    from starlette.testclient import TestClient

    from metrics_service import create_app

    return TestClient(
        create_app(Config(jsonl=tmp_path / "m.jsonl", cors_origins=origins))
    )


BEACON = b'{"visitor_id":"visitor-123","event":"page_view"}'


@pytest.mark.parametrize("url", ["/api/metrics/event", "/api/metrics/events"])
def test_an_origin_outside_the_list_cannot_write(tmp_path: Path, url: str) -> None:
    body = BEACON if url.endswith("event") else b"[" + BEACON + b"]"
    with cors_client(tmp_path, ("https://good.example",)) as client:
        r = client.post(
            url,
            content=body,
            headers={"content-type": "text/plain", "origin": "https://evil.example"},
        )
        assert r.status_code == 403
        assert "https://evil.example" in r.json()["detail"]
        assert "METRICS_CORS_ORIGINS" in r.json()["detail"]
        assert client.get("/api/metrics/behavior").json()["total"] == 0
        good = client.post(
            url,
            content=body,
            headers={"content-type": "text/plain", "origin": "https://good.example"},
        )
        assert good.status_code == 202
        assert good.headers["access-control-allow-origin"] == "https://good.example"
        # No Origin: curl, server libraries.
        assert client.post(url, content=body).status_code == 202
        # Reads are not writes: the browser hides their answers already.
        r = client.get(
            "/api/metrics/behavior", headers={"origin": "https://evil.example"}
        )
        assert r.status_code == 200
        assert r.json()["total"] == 2
    assert (tmp_path / "m.jsonl").read_bytes().count(b"\n") == 2


def test_a_star_lets_every_origin_write(tmp_path: Path) -> None:
    with cors_client(tmp_path, ("*",)) as client:
        r = client.post(
            "/api/metrics/event",
            content=BEACON,
            headers={"content-type": "text/plain", "origin": "https://any.example"},
        )
        assert r.status_code == 202


@pytest.mark.parametrize(
    ("origin", "method", "detail"),
    [
        ("https://evil.example", "POST", "Disallowed CORS origin"),
        ("https://good.example", "PUT", "Disallowed CORS method"),
    ],
)
def test_a_refused_preflight_answers_in_the_one_error_shape(
    tmp_path: Path, origin: str, method: str, detail: str
) -> None:
    with cors_client(tmp_path, ("https://good.example",)) as client:
        r = client.options(
            "/api/metrics/event",
            headers={"origin": origin, "access-control-request-method": method},
        )
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": detail}
    assert "Origin" in r.headers["vary"]
