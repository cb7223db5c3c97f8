"""The one ASGI front door: CORS, tokens, the body deadline, dispatch and errors.

Every HTTP request passes here once. A POST to an ingest path goes straight to its
handler (ingest/endpoint.py); everything else to Starlette's router. Whatever either
raises is answered here, `{"detail": ...}` with its status, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import resource
from collections.abc import Iterable
from typing import Any, ClassVar

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from metrics_service.http.auth import Guards, Tokens, route_path, split_token
from metrics_service.http.deadline import deadline
from metrics_service.http.errors import ApiError, as_api_error, count_rejection, encode
from metrics_service.http.openapi import Endpoint
from metrics_service.settings import Config


class FrontDoor:
    def __init__(
        self, router: ASGIApp, *, config: Config, endpoints: Iterable[Endpoint]
    ) -> None:
        endpoints = list(endpoints)
        self.router = router
        self.timeout = config.body_timeout
        self.guards = Guards(endpoints)
        self.tokens = Tokens(ingest=config.ingest_token, read=config.read_token)
        # The ingest handlers, served without the router: they are most requests.
        self.lanes: dict[str, ASGIApp] = {
            e.path: e.handler for e in endpoints if e.guard == "ingest"
        }
        # CORS comes before tokens, so preflights are answered without one and 401s
        # still carry the CORS headers.
        self.cors = CORSMiddleware(
            self.handle,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials=False,
            max_age=600,
        )
        # CORS only hides answers from pages: a `text/plain` POST needs no preflight,
        # so a page on any origin could still write. With a list of origins, ingest
        # refuses the others itself (requests without Origin are not from a page).
        self.origin_checked = "*" not in config.cors_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.router(scope, receive, send)
            return
        for name, _ in scope["headers"]:
            if name == b"origin":
                await self.cors(scope, receive, send)
                return
        await self.handle(scope, receive, send, vary=True)

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, *, vary: bool = False
    ) -> None:
        """`vary`: add the `Vary: Origin` CORS adds to answers to requests with one."""
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if vary:
                    vary_origin(message)
            await send(message)

        try:
            # The token never reaches a log line, an error or a filter parser
            # ("unknown parameter 'token'"), with or without tokens configured.
            query_token = None
            if scope.get("query_string"):
                query_token, scope["query_string"] = split_token(scope["query_string"])
            path = route_path(scope)
            if self.origin_checked and path in self.lanes:
                self.check_origin(scope)
            if self.tokens.any:
                self.tokens.check(scope, self.guards.of(path), query_token)
            timed = deadline(receive, self.timeout)
            lane = self.lanes.get(path) if scope["method"] == "POST" else None
            await (lane or self.router)(scope, timed, tracked_send)
        except ClientDisconnect:
            pass  # the client left mid-body: nobody is there to read an answer
        except Exception as exc:
            if started:
                raise
            error = as_api_error(exc, scope)
            count_rejection(scope, error.status_code)
            body, headers = encode(error)
            headers.append((b"content-length", b"%d" % len(body)))
            # uvicorn refuses a second start if sending the first one failed.
            with contextlib.suppress(RuntimeError):
                await tracked_send(
                    {
                        "type": "http.response.start",
                        "status": error.status_code,
                        "headers": headers,
                    }
                )
                await tracked_send({"type": "http.response.body", "body": body})
            if not isinstance(exc, ApiError) and error.status_code == 500:
                raise  # as Starlette's ServerErrorMiddleware does, for the server's log

    def check_origin(self, scope: Scope) -> None:
        """403 for a request whose Origin is not one of METRICS_CORS_ORIGINS."""
        if scope["method"] == "OPTIONS":
            return
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1")
                if self.cors.is_allowed_origin(origin):
                    return
                shown = origin if len(origin) <= 100 else origin[:97] + "..."
                raise ApiError(
                    403,
                    f"origin {shown!r} may not send events: it is not one of "
                    "METRICS_CORS_ORIGINS",
                )


def vary_origin(message: Message) -> None:
    headers = message.get("headers")
    if not headers:
        message["headers"] = [(b"vary", b"Origin")]
    elif any(name == b"vary" for name, _ in headers):
        mutable = MutableHeaders(scope=message)
        mutable["Vary"] = ", ".join([*mutable.getlist("Vary"), "Origin"])
    else:
        message["headers"] = [*headers, (b"vary", b"Origin")]


# -- connections: before a request reaches the app ------------------------------------

# A request's headers must arrive within this many seconds (as METRICS_BODY_TIMEOUT
# bounds its body).
HEADER_TIMEOUT = 10.0
# File descriptors kept for the sink, rotated segments, logs and the event loop: the
# cap on open connections is the open-file limit less these.
RESERVED_FILES = 64


def connection_cap() -> int:
    """The cap on open connections: the process's open-file limit less RESERVED_FILES."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 65_536
    return max(soft - RESERVED_FILES, 16)


def _plain_answer(status: bytes, detail: bytes) -> bytes:
    body = b'{"detail":"%s"}' % detail
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s"
    ) % (status, len(body), body)


HEADERS_TOO_SLOW = _plain_answer(
    b"408 Request Timeout",
    b"the request headers did not arrive within %d seconds" % HEADER_TIMEOUT,
)
TOO_MANY_CONNECTIONS = _plain_answer(
    b"503 Service Unavailable",
    b"too many open connections; try again",
)


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with what uvicorn lacks against slow clients.

    A request's headers must arrive within HEADER_TIMEOUT seconds of the connection
    being opened or of the request's first byte (a keep-alive connection with nothing
    to send is closed by uvicorn's own 5-second keep-alive timeout): then 408 and the
    connection is closed. A sweep once a second finds those; a request costs one
    clock reading. Past connection_cap() open connections, each new one closes the
    idle ones (waiting for headers, or kept alive between requests) that have waited
    longest; when every other connection is busy with a request, the new one gets
    503 and is closed. So clients that never finish their headers can neither keep
    their sockets nor use up the process's file descriptors.
    """

    header_timeout: ClassVar[float] = HEADER_TIMEOUT
    max_connections: ClassVar[int] = 0  # 0: connection_cap(), on first use

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not GuardedHttp.max_connections:
            GuardedHttp.max_connections = connection_cap()
        # Since when the connection waits for a request's headers; None: it does not.
        self.waiting_since: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.waiting_since = self.loop.time()
        state = self.server_state
        if not getattr(state, "header_sweep", False):
            state.header_sweep = True  # type: ignore[attr-defined]
            self.loop.call_later(1.0, _sweep, self.loop, self.connections)
        if len(self.connections) > self.max_connections:
            self.shed()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.waiting_since is None:
            self.waiting_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self.waiting_since = None
        super().on_headers_complete()

    def idle_since(self) -> float | None:
        """Since when the connection has had nothing to do; None while it is busy."""
        if self.waiting_since is not None:
            return self.waiting_since
        keep_alive = self.timeout_keep_alive_task
        if keep_alive is not None:
            return keep_alive.when() - self.timeout_keep_alive
        return None

    def shed(self) -> None:
        """Close the idle connections that waited longest, this one last."""
        excess = len(self.connections) - self.max_connections
        idle = []
        for each in self.connections:
            if isinstance(each, GuardedHttp) and each is not self:
                since = each.idle_since()
                if since is not None:
                    idle.append((since, id(each), each))
        oldest = heapq.nsmallest(excess, idle)
        for _, _, each in oldest:
            each.drop()
        if len(oldest) < excess:
            self.drop()

    def drop(self) -> None:
        """Close now: with a 503 when a request may be on its way."""
        self.connections.discard(self)
        if self.transport.is_closing():
            return
        if self.waiting_since is not None:
            self.transport.write(TOO_MANY_CONNECTIONS)
        self.transport.close()

    def headers_too_slow(self) -> None:
        self.waiting_since = None
        self.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.write(HEADERS_TOO_SLOW)
            self.transport.close()


def _sweep(loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
    """Once a second: close the connections whose headers are late."""
    now = loop.time()
    late = [
        each
        for each in connections
        if isinstance(each, GuardedHttp)
        and each.waiting_since is not None
        and now - each.waiting_since >= each.header_timeout
    ]
    for each in late:
        each.headers_too_slow()
    loop.call_later(1.0, _sweep, loop, connections)
