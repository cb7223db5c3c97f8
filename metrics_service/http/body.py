"""Reading a request body: its headers, Content-Type, gzip and size limit."""

from __future__ import annotations

import zlib
from typing import NamedTuple

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from metrics_service.http.errors import ApiError

# text/plain is what sendBeacon and keepalive fetch send; form-urlencoded is what
# `curl -d` sends when the user forgets -H. The body is parsed as JSON either way,
# and JSON is UTF-8 (RFC 8259): a charset other than utf-8 is refused (415).
ACCEPTED_TYPES = (
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "",
)
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
BATCH_TYPES = ACCEPTED_TYPES[:-1] + NDJSON_TYPES + ("",)
GZIP_WBITS = 16 + zlib.MAX_WBITS
# The User-Agent copied into events is cut to this many characters: a header is not
# counted against METRICS_MAX_EVENT_BYTES, and a batch copies it into every event.
MAX_USER_AGENT = 512


class Head(NamedTuple):
    """The request headers ingest needs, found in one pass (first occurrence wins).
    All but the User-Agent as sent: the functions below read them."""

    content_type: bytes | None
    content_encoding: bytes | None
    content_length: bytes | None
    user_agent: str | None


_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__


def read_head(headers: list[tuple[bytes, bytes]]) -> Head:
    content_type = encoding = length = user_agent = None
    for name, value in headers:
        if name == b"content-type":
            if content_type is None:
                content_type = value
        elif name == b"content-length":
            if length is None:
                length = value
        elif name == b"user-agent":
            if user_agent is None:
                if len(value) <= MAX_USER_AGENT and value.isascii():
                    user_agent = value.decode()  # the common case
                else:
                    user_agent = header_text(value, MAX_USER_AGENT)
        elif name == b"content-encoding" and encoding is None:
            encoding = value
    return _new(Head, (content_type, encoding, length, user_agent))


def header_text(value: bytes, limit: int) -> str:
    """A header's text as browsers send it: UTF-8, else latin-1 (what HTTP/1.1 once
    allowed), cut to `limit` characters without decoding much more than that."""
    cut = value[: 4 * limit]  # `limit` UTF-8 characters take at most this
    try:
        text = cut.decode()
    except UnicodeDecodeError as exc:
        if len(cut) < len(value) and exc.reason == "unexpected end of data":
            text = cut[: exc.start].decode()  # the cut split a character
        else:
            text = cut.decode("latin-1")
    return text[:limit]


_media_types: dict[bytes | None, str] = {}
_UTF8 = ("utf-8", "utf8")


def media_type(head: Head) -> str:
    """The Content-Type's media type, lowercase ("" without one). 415 for a charset
    other than UTF-8: every accepted body is JSON, which is UTF-8."""
    raw = head.content_type
    kind = _media_types.get(raw)
    if kind is None:
        kind, _, params = (raw or b"").decode("latin-1").partition(";")
        kind = kind.strip().lower()
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() != "charset":
                continue
            charset = value.strip().strip('"').strip().lower()
            if charset not in _UTF8:
                shown = charset if len(charset) <= 40 else charset[:37] + "..."
                raise ApiError(
                    415,
                    f"unsupported charset {shown!r} in Content-Type: JSON is "
                    "UTF-8; send charset=utf-8 or no charset",
                )
        if len(_media_types) < 64:  # clients send a handful; odd ones are not kept
            _media_types[raw] = kind
    return kind


def content_encoding(head: Head) -> str:
    """ "gzip" or "" (none); anything else is refused before the body is read."""
    if head.content_encoding is None:
        return ""
    raw = head.content_encoding.decode("latin-1").strip().lower()
    if raw in ("", "identity"):
        return ""
    if raw in ("gzip", "x-gzip"):
        return "gzip"
    raise ApiError(415, f"unsupported Content-Encoding {raw!r}; send gzip or none")


class Gunzip:
    """Inflates a gzip body piece by piece, never producing more than limit + 1 bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.fed = 0
        self._inflater = zlib.decompressobj(GZIP_WBITS)

    def feed(self, data: bytes) -> bytes:
        self.fed += len(data)
        parts: list[bytes] = []
        while data:
            room = self.limit - self.size + 1
            try:
                part = self._inflater.decompress(data, room)
            except zlib.error as exc:
                raise ApiError(400, f"body is not valid gzip: {exc}") from None
            self.size += len(part)
            if self.size > self.limit:
                # Inflating stops here, so a gzip bomb costs at most limit + 1 bytes.
                raise ApiError(
                    413,
                    "decompressed " + too_large(self.limit, self.size, at_least=True),
                )
            parts.append(part)
            if self._inflater.eof:
                # Concatenated gzip members are one valid gzip body.
                data = self._inflater.unused_data
                if data:
                    self._inflater = zlib.decompressobj(GZIP_WBITS)
            else:
                data = self._inflater.unconsumed_tail
        return b"".join(parts)

    def finish(self) -> None:
        if self.fed and not self._inflater.eof:
            raise ApiError(400, "body is not valid gzip: the stream is truncated")


async def read_body(head: Head, receive: Receive, limit: int) -> bytes:
    """The request body, decompressed; 413 as soon as it would pass `limit` bytes.

    For gzip the limit applies both to the bytes received and to the inflated body.
    Raises ClientDisconnect when the client leaves mid-body, as Request.stream() does.
    """
    gunzip = None
    if head.content_encoding is not None and content_encoding(head) == "gzip":
        gunzip = Gunzip(limit)
    declared = head.content_length
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            # int() reads text as it reads bytes, and some non-ASCII spaces too.
            try:
                size = int(declared.decode("latin-1"))
            except ValueError:
                raise ApiError(400, "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(413, too_large(limit, size))
    if gunzip is None:
        # The common case: the whole body in the first message, as the server
        # buffered it before starting the app.
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            body: bytes = message.get("body", b"")
            if len(body) > limit:
                raise ApiError(413, too_large(limit, len(body), at_least=True))
            return body
        first = [message]
    else:
        first = []
    chunks: list[bytes] = []
    received = 0
    while True:
        message = first.pop() if first else await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk: bytes = message.get("body", b"")
            if chunk:
                received += len(chunk)
                if received > limit:
                    raise ApiError(413, too_large(limit, received, at_least=True))
                chunks.append(chunk if gunzip is None else gunzip.feed(chunk))
            if not message.get("more_body", False):
                break
        elif kind == "http.disconnect":
            raise ClientDisconnect()
    if gunzip is not None:
        gunzip.finish()
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def too_large(limit: int, size: int, *, at_least: bool = False) -> str:
    actual = f"at least {size:,}" if at_least else f"{size:,}"
    return f"body is {actual} bytes; the limit is {limit:,} bytes"
