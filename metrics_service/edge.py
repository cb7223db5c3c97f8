"""CORS, bearer tokens and the body deadline as one pure-ASGI layer.

Three stacked middlewares cost ~35 µs per request, more than validating an event.
Here the common request (no Origin, no token configured) pays one header scan, one
send wrapper (CORS always adds `Vary: Origin`) and one receive wrapper; requests
with an Origin still go through Starlette's CORSMiddleware, and AuthMiddleware runs
only when a token is configured.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Generator, Mapping
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import AuthMiddleware, split_token
from .config import Config
from .errors import ApiError, api_error
from .limits import BodyTimeout


class Edge:
    """Outermost first, as before: CORS, then auth, then the body deadline.

    BodyTimeout raised by `receive()` is answered by Starlette's exception handlers
    inside this layer (408 `{"detail": ...}`), like any ApiError. `lanes` maps a
    path to the bare ASGI app that serves POSTs to it, skipping the router and its
    exception middleware: ApiError is answered here with the same handler.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: Config,
        lanes: Mapping[str, ASGIApp] | None = None,
        vary: bool = False,
    ) -> None:
        self.app = app
        self.lanes = dict(lanes or {})
        self.vary = vary  # add Vary: Origin to error answers (see direct())
        self.timeout = config.body_timeout
        self.inner: ASGIApp = self.scrubbed
        self.guarded = bool(config.ingest_token or config.read_token)
        if self.guarded:
            self.inner = AuthMiddleware(
                self.deadline,
                ingest_token=config.ingest_token,
                read_token=config.read_token,
            )
        # CORS must come before auth, so preflights are answered without a token
        # and 401s still carry the CORS headers.
        self.cors = CORSMiddleware(
            self.inner,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials=False,
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, _ in scope["headers"]:
            if name == b"origin":
                await self.cors(scope, receive, send)
                return

        async def vary_send(message: Message) -> None:
            # What CORSMiddleware does to a response to a request without Origin.
            if message["type"] == "http.response.start":
                vary_origin(message)
            await send(message)

        if self.guarded:
            await self.inner(scope, receive, vary_send)
            return
        # scrubbed() inlined: one coroutine frame less per request.
        if scope.get("query_string"):
            scope["query_string"] = split_token(scope["query_string"])[1]
        await self.deadline(scope, receive, vary_send)

    def direct(self, scope: Scope) -> bool:
        """True for a request no layer has work on but the body deadline: an HTTP POST
        to a lane, with no Origin, no query string and no token configured."""
        if (
            self.guarded
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in self.lanes
            or scope.get("query_string")
            or scope.get("root_path")
        ):
            return False
        for name, _ in scope["headers"]:  # noqa: SIM110 (all() adds a generator per request)
            if name == b"origin":
                return False
        return True

    async def scrubbed(self, scope: Scope, receive: Receive, send: Send) -> None:
        # With no token configured, a `token` parameter is still removed, so it never
        # reaches a log line or a filter parser ("unknown parameter 'token'").
        if scope.get("query_string"):
            scope["query_string"] = split_token(scope["query_string"])[1]
        await self.deadline(scope, receive, send)

    async def deadline(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The whole body must arrive within `timeout` s of the request's start."""
        # time.monotonic() rather than loop.time(): get_running_loop() costs a getpid()
        # system call on Python 3.11, and most bodies never need the loop's clock.
        started = time.monotonic()
        timeout = self.timeout
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            pending: Awaitable[Message] = receive()
            message: Message | None = None
            if type(pending) is types.CoroutineType:
                # A timer costs ~3-6 us; most bodies are already buffered and the
                # first step of receive() returns without waiting, so arm it only
                # when receive() actually has to wait.
                try:
                    waiting_on = pending.send(None)
                except StopIteration as done:
                    message = done.value
                else:
                    pending = Resumed(pending, waiting_on)
            if message is None:
                try:
                    # timeout_at() needs no extra task, unlike wait_for().
                    left = timeout - (time.monotonic() - started)
                    deadline = asyncio.get_running_loop().time() + left
                    async with asyncio.timeout_at(deadline):
                        message = await pending
                except TimeoutError:
                    body_done = True
                    raise BodyTimeout(timeout) from None
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            return message

        lane = self.lanes.get(scope["path"])
        if lane is None or scope["method"] != "POST" or scope.get("root_path"):
            lane = None
        # try/except rather than contextlib.suppress(): no context manager per request.
        try:
            if lane is None:
                await self.app(scope, timed_receive, send)
                return
            try:
                await lane(scope, timed_receive, send)
            except ApiError as exc:
                # What the app's exception handler answers (and counts) for the route.
                request = Request(scope, timed_receive, send)
                response = await api_error(request, exc)
                if self.vary:
                    response.headers["vary"] = "Origin"
                await response(scope, timed_receive, send)
        except ClientDisconnect:
            # The client left mid-body: nobody is there to read an answer.
            pass


class Resumed:
    """Awaits the rest of a coroutine whose first step already ran and yielded `first`.

    Behaves as `yield from` would have from that point: values go to the task,
    results and exceptions (a cancellation by the timeout) go back to the coroutine.
    """

    __slots__ = ("coro", "first")

    def __init__(
        self, coro: types.CoroutineType[Any, Any, Message], first: Any
    ) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Message]:
        coro, out = self.coro, self.first
        while True:
            try:
                sent = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    out = coro.throw(exc)
                except StopIteration as done:
                    result: Message = done.value
                    return result
            else:
                try:
                    out = coro.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result


def vary_origin(message: Message) -> None:
    headers = message.get("headers")
    if not headers:
        message["headers"] = [(b"vary", b"Origin")]
    elif any(name == b"vary" for name, _ in headers):
        mutable = MutableHeaders(scope=message)
        mutable["Vary"] = ", ".join([*mutable.getlist("Vary"), "Origin"])
    else:
        message["headers"] = [*headers, (b"vary", b"Origin")]
