"""A deadline on request bodies, so a client that stops sending cannot hold a worker."""

from __future__ import annotations

import asyncio

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError


class BodyTimeout(ApiError):
    def __init__(self, timeout: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout:g} s",
            {"Connection": "close"},
        )


class BodyTimeoutMiddleware:
    """The whole body must arrive within `timeout` seconds of the request's start.

    Past the deadline the app's `receive()` raises BodyTimeout (answered 408 with
    `Connection: close`); once the body is complete, `receive()` is left alone so
    streaming responses can still listen for the disconnect.
    """

    def __init__(self, app: ASGIApp, *, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                # timeout_at() needs no extra task, unlike wait_for(): this is on every POST.
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                body_done = True
                raise BodyTimeout(self.timeout) from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout as exc:
            # Only reached when no exception handler answered it (a bare ASGI app).
            if not started:
                await send_error(send, exc)
        except ClientDisconnect:
            # The client left mid-body: nobody is there to read an answer.
            pass


async def send_error(send: Send, exc: ApiError) -> None:
    body = orjson.dumps({"detail": exc.detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send(
        {"type": "http.response.start", "status": exc.status_code, "headers": headers}
    )
    await send({"type": "http.response.body", "body": body})
