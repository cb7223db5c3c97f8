"""Bearer-token access control as pure ASGI middleware.

METRICS_INGEST_TOKEN guards the ingest endpoints, METRICS_READ_TOKEN every other route
except the open ones (health, the OpenAPI document, tracker.js and the dashboard page,
whose own API calls carry the token). A token comes in `Authorization: Bearer <token>`
or, for sendBeacon and EventSource which cannot set headers, in `?token=`.
"""

from __future__ import annotations

import hmac
from typing import Literal
from urllib.parse import unquote_to_bytes

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import count_rejection

Guard = Literal["ingest", "read"]

TOKEN_PARAM = b"token"
INGEST_PATHS = frozenset({"/api/metrics/event", "/api/metrics/events"})
OPEN_PATHS = frozenset(
    {
        "/api/metrics/behavior/health",
        "/openapi.json",
        "/tracker.js",
        "/",
        "/favicon.ico",
    }
)
OPEN_PREFIXES = ("/static/",)


def guard_of(path: str) -> Guard | None:
    """Which token a path needs; anything not listed as open needs the read token."""
    if path in INGEST_PATHS:
        return "ingest"
    if path in OPEN_PATHS:
        return None
    for prefix in OPEN_PREFIXES:
        # One plain file name: `/static/../api/...` must not borrow the open prefix.
        name = path[len(prefix) :]
        if path.startswith(prefix) and name and "/" not in name and name != "..":
            return None
    return "read"


def route_path(scope: Scope) -> str:
    """The path the router matches: without the root path when mounted below one."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def split_token(query_string: bytes) -> tuple[bytes | None, bytes]:
    """The `token` query parameter (decoded) and the query string without it.

    Works on the raw bytes so every other parameter reaches the app unchanged.
    """
    if not query_string:
        return None, query_string
    token: bytes | None = None
    kept: list[bytes] = []
    for part in query_string.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name) == TOKEN_PARAM:
            token = unquote_plus(value)
        else:
            kept.append(part)
    if token is None:
        return None, query_string
    return token, b"&".join(kept)


def unquote_plus(value: bytes) -> bytes:
    return unquote_to_bytes(value.replace(b"+", b" "))


def bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                return credentials.strip()
            return b""
    return None


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        ingest_token: str | None = None,
        read_token: str | None = None,
    ) -> None:
        self.app = app
        self.tokens: dict[Guard, bytes | None] = {
            "ingest": ingest_token.encode() if ingest_token else None,
            "read": read_token.encode() if read_token else None,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Always scrub the token from the query, so it never reaches an access log
        # line, an error message or a filter parser ("unknown parameter 'token'").
        query_token, query_string = split_token(scope.get("query_string", b""))
        scope["query_string"] = query_string
        guard = guard_of(route_path(scope))
        expected = None if guard is None else self.tokens[guard]
        if guard is None or expected is None or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        presented = bearer(scope["headers"])
        if presented is None:
            presented = query_token
        if presented is not None and hmac.compare_digest(presented, expected):
            await self.app(scope, receive, send)
            return
        if "app" in scope:  # counted in GET /metrics like every other refusal
            count_rejection(Request(scope), 401)
        await unauthorized(send, guard, missing=not presented)


async def unauthorized(send: Send, guard: Guard, *, missing: bool) -> None:
    name = "METRICS_INGEST_TOKEN" if guard == "ingest" else "METRICS_READ_TOKEN"
    problem = "a token is required" if missing else "the token is not valid"
    detail = (
        f"{problem}: send 'Authorization: Bearer <token>' (or ?token=) "
        f"with the value of {name}"
    )
    challenge = b'Bearer realm="metrics_service"'
    if not missing:
        challenge += b', error="invalid_token"'
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
