"""The per-test tag of an ingest request (`test_id`), read from its carriers.

The collector stamps it on every event of the request (store/line.py, `test_id`
after `event_id`); it is never a field of the event body. First found wins: the
HEADER, then the QUERY parameter of the ingest URL, then the COOKIE. The header's
value is UTF-8 as sent; the query parameter's and the cookie's are URL-decoded
(encodeURIComponent), as a cookie value cannot hold spaces, commas or semicolons.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote

from starlette.types import Scope

from metrics_service import _native
from metrics_service.http.errors import ApiError
from metrics_service.ingest.contract import CONTROL_MESSAGE, has_control_chars

HEADER = "X-Metrics-Test-Id"
QUERY = "test_id"
COOKIE = "metrics_test_id"
MAX_LENGTH = 256

_HEADER = HEADER.lower().encode()
_QUERY = QUERY.encode()
_COOKIE = COOKIE.encode()


def test_id(scope: Scope) -> str | None:
    """The request's test tag, or None when no carrier has one.

    Raises ApiError 422 naming the carrier for an empty, overlong or control-
    character value, and for a carrier given twice.
    """
    # One pass over the headers in C, allocating nothing when neither is there.
    found = _native.carriers(scope["headers"], _HEADER, _COOKIE)
    query: bytes = scope.get("query_string", b"")
    if found is None and not (query and _QUERY in query):
        return None  # the common case
    headers, cookies = found or ([], [])
    if len(headers) > 1:
        raise ApiError(422, f"{HEADER} header: given more than once")
    if headers:
        try:
            text = headers[0].decode()
        except UnicodeDecodeError:
            raise ApiError(422, f"{HEADER} header: not valid UTF-8") from None
        return _checked(text.strip(" \t"), f"{HEADER} header")
    if query and _QUERY in query:
        given = [
            value
            for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            if key == QUERY
        ]
        if len(given) > 1:
            raise ApiError(422, f"{QUERY} query parameter: given more than once")
        if given:
            return _checked(given[0], f"{QUERY} query parameter")
    for value in cookies:
        cookie = _cookie(value.decode("latin-1"))
        if cookie is not None:
            return _checked(unquote(cookie), f"{COOKIE} cookie")
    return None


# Its name starts with "test": a test module importing it must not have pytest
# collect it as a test.
test_id.__test__ = False  # type: ignore[attr-defined]


def _cookie(header: str) -> str | None:
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == COOKIE:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]  # a quoted cookie value (RFC 6265)
            return value
    return None


def _checked(value: str, carrier: str) -> str:
    if not value:
        raise ApiError(422, f"{carrier}: is empty; send 1 to {MAX_LENGTH} characters")
    if len(value) > MAX_LENGTH:
        raise ApiError(
            422,
            f"{carrier}: is {len(value):,} characters; the limit is {MAX_LENGTH}",
        )
    if has_control_chars(value):
        raise ApiError(422, f"{carrier}: {CONTROL_MESSAGE}")
    return value
