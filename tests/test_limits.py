from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from metrics_service.limits import BodyTimeoutMiddleware

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}


async def read_body_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = await Request(scope, receive).body()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def run(app: Any, messages: list[Message], hang: bool = True) -> list[Message]:
    """Call `app` with `messages` as the request; then receive() hangs (or disconnects)."""
    sent: list[Message] = []

    async def main() -> None:
        queue = list(messages)
        never = asyncio.Event()

        async def receive() -> Message:
            if queue:
                return queue.pop(0)
            if hang:
                await never.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await asyncio.wait_for(app(dict(SCOPE), receive, send), 10)

    asyncio.run(main())
    return sent


def test_a_body_that_stops_arriving_gets_408() -> None:
    app = BodyTimeoutMiddleware(read_body_app, timeout=0.05)
    sent = run(app, [{"type": "http.request", "body": b"{", "more_body": True}])
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert "did not arrive within 0.05 s" in orjson.loads(sent[1]["body"])["detail"]


def test_a_complete_body_passes_untouched() -> None:
    app = BodyTimeoutMiddleware(read_body_app, timeout=0.05)
    sent = run(
        app,
        [
            {"type": "http.request", "body": b"ab", "more_body": True},
            {"type": "http.request", "body": b"c", "more_body": False},
        ],
    )
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"abc"


def test_waiting_for_the_disconnect_after_the_body_is_not_timed() -> None:
    async def listens(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the (empty) body
        await asyncio.sleep(0.1)  # longer than the deadline
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["type"].encode()})

    app = BodyTimeoutMiddleware(listens, timeout=0.05)
    sent = run(app, [{"type": "http.request", "body": b""}], hang=False)
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == b"http.disconnect"


def test_a_client_that_left_mid_body_ends_quietly() -> None:
    app = BodyTimeoutMiddleware(read_body_app, timeout=5)
    sent = run(
        app, [{"type": "http.request", "body": b"{", "more_body": True}], hang=False
    )
    assert sent == []
