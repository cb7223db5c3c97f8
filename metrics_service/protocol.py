"""uvicorn's httptools protocol, writing a fixed-length answer's head and body at once.

Stock uvicorn writes the head when the app sends `http.response.start` and the body
on `http.response.body`: two system calls and two TCP segments for every small JSON
answer, ~3% of a single-event request under load. Here a head with a Content-Length
waits for the first body part and goes out in the same write(); HEAD answers and
chunked streams are written as before.

`send` and `on_headers_complete` are uvicorn's own, with that change and the cycle
class (tests/test_protocol.py checks the copies against the installed uvicorn).
`http_option()` falls back to uvicorn's own choice when uvicorn's code has changed.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import urllib.parse

import httptools
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

# sha256 of the uvicorn 0.54 source these copies were made from.
UPSTREAM = {
    "send": "abdd8601b326a8da972436918d3a954e1ef39c6bf0cd9e1c1954c2e798d0bb9c",
    "on_headers_complete": (
        "1ea8589acfad92d8ff9182775f337d98fc469e0fa39642a83195fca920f5ca96"
    ),
}


class OneWriteCycle(RequestResponseCycle):
    head: bytes | None = None  # a head waiting for its body

    async def send(self, message: ASGISendEvent) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()

        if self.disconnected:
            return

        if not self.response_started:
            # Sending response status line and headers
            if message["type"] != "http.response.start":
                raise RuntimeError(
                    "Expected ASGI message 'http.response.start', "
                    f"but got '{message['type']}'."
                )

            self.response_started = True
            self.waiting_for_100_continue = False

            status_code = message["status"]
            headers = self.default_headers + list(message.get("headers", []))

            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(self.scope),
                    self.scope["method"],
                    get_path_with_query_string(self.scope),
                    self.scope["http_version"],
                    status_code,
                )

            # Write response status line and headers
            content = [STATUS_LINE[status_code]]
            has_connection_close = False

            for name, value in headers:
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")

                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value.decode())
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection":
                    connection = [token.lower().strip() for token in value.split(b",")]
                    if b"close" in connection:
                        self.keep_alive = False
                        has_connection_close = True
                content.extend([name, b": ", value, b"\r\n"])

            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")

            if (
                self.chunked_encoding is None
                and self.scope["method"] != "HEAD"
                and status_code not in (204, 304)
            ):
                # Neither content-length nor transfer-encoding specified
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")

            content.append(b"\r\n")
            # The change: a head whose body is coming waits for it (see below).
            if (
                self.chunked_encoding is False
                and self.expected_content_length
                and self.scope["method"] != "HEAD"
            ):
                self.head = b"".join(content)
            else:
                self.transport.write(b"".join(content))

        elif not self.response_complete:
            # Sending response body
            if message["type"] != "http.response.body":
                raise RuntimeError(
                    "Expected ASGI message 'http.response.body', "
                    f"but got '{message['type']}'."
                )

            body = message.get("body", b"")
            more_body = message.get("more_body", False)

            # Write response body
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
            elif self.chunked_encoding:
                if body:  # noqa: SIM108 (uvicorn's code, as written there)
                    content = [b"%x\r\n" % len(body), body, b"\r\n"]
                else:
                    content = []
                if not more_body:
                    content.append(b"0\r\n\r\n")
                self.transport.write(b"".join(content))
            else:
                num_bytes = len(body)
                if num_bytes > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                else:
                    self.expected_content_length -= num_bytes
                # The change: the waiting head goes out with the first body part.
                head = self.head
                if head is not None:
                    self.head = None
                    body = head + body
                self.transport.write(body)

            # Handle response completion
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()
                self.on_response()

        else:
            # Response already sent
            raise RuntimeError(
                f"Unexpected ASGI message '{message['type']}' sent, "
                "after response already completed."
            )


class OneWriteProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        http_version = self.parser.get_http_version()
        method = self.parser.get_method()
        self.scope["method"] = method.decode("ascii")
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        full_path = self.root_path + path
        full_raw_path = self.root_path.encode("ascii") + raw_path
        self.scope["path"] = full_path
        self.scope["raw_path"] = full_raw_path
        self.scope["query_string"] = parsed_url.query or b""

        # Handle 503 responses when 'limit_concurrency' is exceeded.
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency
            or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            message = "Exceeded concurrency limit."
            self.logger.warning(message)
        else:
            app = self.app

        existing_cycle = self.cycle
        # The change: OneWriteCycle rather than RequestResponseCycle.
        self.cycle = OneWriteCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        if existing_cycle is None or existing_cycle.response_complete:
            # Standard case - start processing the request.
            self._start_asgi_task(self.cycle, app)
        else:
            # Pipelined HTTP requests need to be queued up.
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))


def upstream_digest(name: str) -> str:
    """sha256 of the installed uvicorn's source of `send` or `on_headers_complete`."""
    owner = RequestResponseCycle if name == "send" else HttpToolsProtocol
    source = inspect.getsource(getattr(owner, name))
    return hashlib.sha256(source.encode()).hexdigest()


def http_option() -> str:
    """uvicorn's `http` setting: this protocol while uvicorn's code is the one copied."""
    try:
        current = all(upstream_digest(name) == UPSTREAM[name] for name in UPSTREAM)
    except (OSError, TypeError):  # no source to read
        current = False
    if current:
        return f"{__name__}:OneWriteProtocol"
    logging.getLogger("metrics_service").warning(
        "this uvicorn's httptools protocol differs from the one metrics_service "
        "extends; using uvicorn's own (two writes per answer)"
    )
    return "auto"
