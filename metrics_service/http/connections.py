"""Connections before a request reaches the app: a deadline for request headers and a
cap on open connections, which uvicorn does not offer (hardening: slow clients).

GuardedHttp subclasses uvicorn's httptools protocol, handed to uvicorn through its
public `http` option; it copies none of uvicorn's code but reads a few of the
protocol's attributes (transport, connections, server_state, the keep-alive timer).
tests/test_connections.py runs it in a real server against the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import heapq
import resource
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


def headers_too_slow(timeout: float) -> bytes:
    return _plain_answer(
        b"408 Request Timeout",
        b"the request headers did not arrive within %g seconds" % timeout,
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
            self.transport.write(headers_too_slow(self.header_timeout))
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
