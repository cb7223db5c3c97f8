"""The one ASGI front door: CORS, tokens, the body deadline, dispatch and errors.

Every HTTP request passes here once. A POST to an ingest path goes straight to its
handler (ingest/endpoint.py); everything else to Starlette's router. Whatever either
raises is answered here, `{"detail": ...}` with its status, and counted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Iterable
from typing import Protocol

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics_service.http.auth import Guards, Tokens, route_path, split_token
from metrics_service.http.deadline import Deadline
from metrics_service.http.errors import ApiError, as_api_error, count_rejection, encode
from metrics_service.http.openapi import Endpoint
from metrics_service.ingest.endpoint import BODY_KEY
from metrics_service.ingest.test_tag import test_id
from metrics_service.settings import Config
from metrics_service.store.quarantine import STATUSES, Request

logger = logging.getLogger("metrics_service")


class Lane(Protocol):
    """An ingest endpoint, served straight from the front door (ingest/endpoint.py)."""

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, vary: bool
    ) -> None: ...


class Cors(CORSMiddleware):
    """Starlette's CORS, with its refused preflights in the one error shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        # "Disallowed CORS origin" and the like, as `{"detail": ...}`.
        error = ApiError(response.status_code, bytes(response.body).decode())
        body, _ = encode(error)
        kept = MutableHeaders(raw=list(response.headers.raw))
        del kept["content-type"]
        del kept["content-length"]
        return Response(
            body,
            status_code=error.status_code,
            headers=dict(kept),
            media_type="application/json",
        )


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
        self.lanes: dict[str, Lane] = {
            e.path: e.handler for e in endpoints if e.guard == "ingest"
        }
        # CORS comes before tokens, so preflights are answered without one and 401s
        # still carry the CORS headers.
        self.cors = Cors(
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

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine itself: it picks the one to await, a level less to step
        # through each time an ingest request resumes.
        if scope["type"] != "http":  # lifespan
            return self.router(scope, receive, send)
        for name, _ in scope["headers"]:
            if name == b"origin":
                return self.cors(scope, receive, send)
        return self.handle(scope, receive, send, vary=True)

    async def handle(
        self, scope: Scope, receive: Receive, send: Send, *, vary: bool = False
    ) -> None:
        """`vary`: add the `Vary: Origin` CORS adds to answers to requests with one."""
        lane = None
        try:
            # The token never reaches a log line, an error or a filter parser
            # ("unknown parameter 'token'"), with or without tokens configured.
            query_token = None
            if scope.get("query_string"):
                query_token, scope["query_string"] = split_token(scope["query_string"])
            path = route_path(scope) if scope.get("root_path") else scope["path"]
            lane = self.lanes.get(path)
            if lane is not None and self.origin_checked:
                self.check_origin(scope)
            if self.tokens.any:
                self.tokens.check(scope, self.guards.of(path), query_token)
            if lane is not None and scope["method"] == "POST":
                # An ingest answer is sent last and carries its own Vary: no wrapper.
                await lane.serve(scope, Deadline(receive, self.timeout), send, vary)
                return
        except ClientDisconnect:
            return  # the client left mid-body: nobody is there to read an answer
        except Exception as exc:
            await self.refuse(scope, exc, send, vary)
            return
        await self.route(scope, receive, send, vary)

    async def route(
        self, scope: Scope, receive: Receive, send: Send, vary: bool
    ) -> None:
        """Everything but an ingest POST: through Starlette's router."""
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if vary:
                    vary_origin(message)
            await send(message)

        try:
            await self.router(scope, Deadline(receive, self.timeout), tracked_send)
        except ClientDisconnect:
            pass
        except Exception as exc:
            if started:
                raise
            await self.refuse(scope, exc, send, vary)

    async def refuse(
        self, scope: Scope, exc: Exception, send: Send, vary: bool
    ) -> None:
        """Answer `exc` as `{"detail": ...}` with its status, and count it."""
        error = as_api_error(exc, scope)
        count_rejection(scope, error.status_code)
        if error.status_code in STATUSES:
            path = route_path(scope) if scope.get("root_path") else scope["path"]
            if path in self.lanes:
                quarantine(scope, path, error)
        body, headers = encode(error)
        headers.append((b"content-length", b"%d" % len(body)))
        if vary:
            headers.append((b"vary", b"Origin"))
        # uvicorn refuses a second start if sending the first one failed.
        with contextlib.suppress(RuntimeError):
            await send(
                {
                    "type": "http.response.start",
                    "status": error.status_code,
                    "headers": headers,
                }
            )
            await send({"type": "http.response.body", "body": body})
        if not isinstance(exc, ApiError) and error.status_code == 500:
            raise exc  # as Starlette's ServerErrorMiddleware does, for the server's log

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


def quarantine(scope: Scope, path: str, error: ApiError) -> None:
    """Record a refused ingest request, before it is answered: with the quarantine's
    next batch, which every read settles first, so a client that reads the quarantine
    after its 4xx finds it. Never raises: the answer comes first."""
    service = getattr(scope.get("app"), "service", None)
    kept = getattr(service, "quarantine", None)
    if kept is None or not kept.enabled:
        return
    try:
        try:
            tag = test_id(scope)
        except ApiError:  # the tag itself was refused: the record goes without it
            tag = None
        body = scope.get(BODY_KEY)
        if body == b"" and scope["method"] == "GET":
            # gtag's GET hits: the whole hit is the query string.
            body = scope.get("query_string") or body
        kept.defer(
            Request(path, error.status_code, error.detail, scope["headers"], body, tag)
        )
    except Exception:
        logger.exception("could not record a refused request to %s", path)


def vary_origin(message: Message) -> None:
    headers = message.get("headers")
    if not headers:
        message["headers"] = [(b"vary", b"Origin")]
    elif any(name == b"vary" for name, _ in headers):
        mutable = MutableHeaders(scope=message)
        mutable["Vary"] = ", ".join([*mutable.getlist("Vary"), "Origin"])
    else:
        message["headers"] = [*headers, (b"vary", b"Origin")]
