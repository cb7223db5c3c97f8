"""Bearer tokens: METRICS_INGEST_TOKEN opens the routes guarded "ingest" and
METRICS_READ_TOKEN those guarded "read" (app.py's table says which, and a path not in
it needs the read token); "open" routes need none. A token comes in
`Authorization: Bearer <token>` or, for sendBeacon and EventSource which cannot set
headers, in `?token=`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from starlette.types import Scope

from metrics_service.http.errors import ApiError

if TYPE_CHECKING:
    from metrics_service.http.openapi import Endpoint, Guard

TOKEN_PARAM = b"token"


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


def bearer(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, str | None]:
    """The token of `Authorization: Bearer <token>` and what is wrong with the header:
    (token, None), (None, problem), or (None, None) without the header. A problem
    never quotes the header, which may hold a token."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            credentials = credentials.strip()
            if scheme.lower() == b"bearer":
                if credentials:
                    return credentials, None
                return None, "the Authorization header has no token after 'Bearer'"
            if not scheme:
                return None, "the Authorization header is empty"
            if not credentials:
                return None, "the Authorization header has no scheme"
            return None, "the Authorization scheme is not Bearer"
    return None, None


class Tokens:
    """The configured tokens, checked for each request by the guard of its route."""

    def __init__(self, *, ingest: str | None, read: str | None) -> None:
        self.by_guard: dict[Guard, bytes | None] = {
            "ingest": ingest.encode() if ingest else None,
            "read": read.encode() if read else None,
            "open": None,
        }
        self.any = bool(ingest or read)

    def check(self, scope: Scope, guard: Guard, query_token: bytes | None) -> None:
        """Raise 401 unless the request carries the token its guard needs."""
        expected = self.by_guard[guard]
        if expected is None or scope["method"] == "OPTIONS":
            return
        presented, problem = bearer(scope["headers"])
        if presented is None and problem is None:
            presented = query_token
        if presented is not None and hmac.compare_digest(presented, expected):
            return
        if problem is not None:  # a header, but not `Bearer <token>`
            raise unauthorized(guard, problem, error="invalid_request")
        if not presented:
            raise unauthorized(guard, "a token is required")
        raise unauthorized(guard, "the token is not valid", error="invalid_token")


def unauthorized(guard: Guard, problem: str, *, error: str | None = None) -> ApiError:
    """401 with RFC 6750's challenge; `error` as it defines, none when no token came."""
    name = "METRICS_INGEST_TOKEN" if guard == "ingest" else "METRICS_READ_TOKEN"
    detail = (
        f"{problem}: send 'Authorization: Bearer <token>' (or ?token=) "
        f"with the value of {name}"
    )
    challenge = 'Bearer realm="metrics_service"'
    if error is not None:
        challenge += f', error="{error}"'
    return ApiError(401, detail, {"WWW-Authenticate": challenge})


class Guards:
    """Each path's guard, from the route table: exact paths, and `{name}` templates
    as one plain file name under their prefix."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.exact: dict[str, Guard] = {}
        self.prefixes: list[tuple[str, Guard]] = []
        for endpoint in endpoints:
            path, guard = endpoint.path, endpoint.guard
            if "{" in path:
                self.prefixes.append((path[: path.index("{")], guard))
            else:
                self.exact[path] = guard

    def of(self, path: str) -> Guard:
        guard = self.exact.get(path)
        if guard is not None:
            return guard
        for prefix, guard in self.prefixes:
            # One plain file name: `/static/../api/...` must not borrow the prefix.
            name = path[len(prefix) :]
            if path.startswith(prefix) and name and "/" not in name and name != "..":
                return guard
        return "read"
