"""Bearer tokens: METRICS_INGEST_TOKEN opens the routes guarded "ingest" and
METRICS_READ_TOKEN those guarded "read" (routes.py says which, and a path not in
it needs the read token); "open" routes need none. A token comes in
`Authorization: Bearer <token>` or, for sendBeacon and EventSource which cannot set
headers, in `?token=`.

Other analytics SDKs (ingest/formats) cannot send either: their ingest routes get the
guard "sdk", which the front door lets through, and the lane checks the SDK's own key
(Segment's writeKey, PostHog's token, GA4's api_secret) with check_sdk_key().
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote_to_bytes

from starlette.types import Scope

from metrics_service.http.errors import ApiError

if TYPE_CHECKING:
    from metrics_service.http.openapi import Endpoint

TOKEN_PARAM = b"token"
# A route's guard as checked: the route table's, or "sdk" for an ingest route whose
# handler checks the SDK's own key (its `own_key` attribute).
Check = Literal["ingest", "read", "open", "sdk"]
# Set by Tokens.check on "sdk" routes: the request carried the ingest token itself.
SDK_TOKEN_OK = "metrics.ingest_token_ok"


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
        self.by_guard: dict[Check, bytes | None] = {
            "ingest": ingest.encode() if ingest else None,
            "read": read.encode() if read else None,
            "open": None,
            "sdk": ingest.encode() if ingest else None,
        }
        self.any = bool(ingest or read)

    def check(self, scope: Scope, guard: Check, query_token: bytes | None) -> None:
        """Raise 401 unless the request carries the token its guard needs."""
        expected = self.by_guard[guard]
        if expected is None or scope["method"] == "OPTIONS":
            return
        presented, problem = bearer(scope["headers"])
        if presented is None and problem is None:
            presented = query_token
        if guard == "sdk":
            # The lane decides, from the SDK's key unless the token itself came.
            scope[SDK_TOKEN_OK] = presented is not None and hmac.compare_digest(
                presented, expected
            )
            return
        if presented is not None and hmac.compare_digest(presented, expected):
            return
        if problem is not None:  # a header, but not `Bearer <token>`
            raise unauthorized(guard, problem, error="invalid_request")
        if not presented:
            raise unauthorized(guard, "a token is required")
        raise unauthorized(guard, "the token is not valid", error="invalid_token")


def check_sdk_key(
    scope: Scope, expected: str | None, keys: Sequence[tuple[str, object]], hint: str
) -> None:
    """For an "sdk" route with METRICS_INGEST_TOKEN set: 401 unless the request
    carried the token (bearer or ?token=) or each key the SDK sent, `(field, value)`,
    is it. `hint` says where the SDK puts its key."""
    if expected is None or scope.get(SDK_TOKEN_OK):
        return
    if not keys:
        raise ApiError(
            401,
            f"a key is required: set {hint} to the value of METRICS_INGEST_TOKEN",
            {"WWW-Authenticate": 'Bearer realm="metrics_service"'},
        )
    wanted = expected.encode()
    for field, value in keys:
        if not isinstance(value, str) or not hmac.compare_digest(
            value.encode(), wanted
        ):
            raise ApiError(
                401,
                f"the {field} is not valid: set {hint} to the value of "
                "METRICS_INGEST_TOKEN",
                {
                    "WWW-Authenticate": 'Bearer realm="metrics_service", '
                    'error="invalid_token"'
                },
            )


def basic_user(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The user of `Authorization: Basic <base64 user:password>`, if that is sent."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() != b"basic":
                return None
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True)
            except (binascii.Error, ValueError):
                return None
            return decoded.partition(b":")[0].decode("utf-8", "replace")
    return None


def unauthorized(guard: Check, problem: str, *, error: str | None = None) -> ApiError:
    """401 with RFC 6750's challenge; `error` as it defines, none when no token came."""
    name = "METRICS_READ_TOKEN" if guard == "read" else "METRICS_INGEST_TOKEN"
    detail = (
        f"{problem}: send 'Authorization: Bearer <token>' (or ?token=) "
        f"with the value of {name}"
    )
    challenge = 'Bearer realm="metrics_service"'
    if error is not None:
        challenge += f', error="{error}"'
    return ApiError(401, detail, {"WWW-Authenticate": challenge})


class Guards:
    """Each path's guard, from the route table: exact paths, and templates whose
    `{name}` is one plain path segment."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.exact: dict[str, Check] = {}
        self.templates: list[tuple[str, str, Check]] = []
        for endpoint in endpoints:
            path = endpoint.path
            guard: Check = endpoint.guard
            if guard == "ingest" and getattr(endpoint.handler, "own_key", False):
                guard = "sdk"
            if "{" in path:
                prefix, _, rest = path.partition("{")
                self.templates.append((prefix, rest.partition("}")[2], guard))
            else:
                self.exact[path] = guard

    def of(self, path: str) -> Check:
        guard = self.exact.get(path)
        if guard is not None:
            return guard
        for prefix, suffix, guard in self.templates:
            if not (path.startswith(prefix) and path.endswith(suffix)):
                continue
            # One plain segment: `/static/../api/...` must not borrow the prefix.
            name = path[len(prefix) : len(path) - len(suffix)]
            if name and "/" not in name and name not in (".", ".."):
                return guard
        return "read"
