"""What a refused request's body shows in its quarantine record: its first 4 KiB as
text, with redacted keys and SDK credentials hidden, and the refused event's name
and visitor when they can be read."""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import orjson

BODY_LIMIT = 4096  # bytes of body text kept per record
MAX_FIELD = 256  # characters of an `event` or `visitor_id` read from a refused body
REDACTED = "[redacted]"
# SDK credentials in a body: dropped from the record at any depth (case-insensitive).
CREDENTIAL_KEYS = frozenset({"writekey", "api_key", "token", "api_secret"})
MAX_DEPTH = 256
_VISITOR_KEYS = ("visitor_id", "anonymousId", "userId", "distinct_id", "client_id")
_EVENT_KEYS = ("event", "name")
_GZIP_MAGIC = b"\x1f\x8b"


class BodyReader:
    """Reads bodies for one set of METRICS_REDACT_KEYS."""

    def __init__(self, redact_keys: Iterable[str] = ()) -> None:
        self.hidden = CREDENTIAL_KEYS | frozenset(k.lower() for k in redact_keys)
        self.hidden_bytes = tuple(key.encode() for key in self.hidden if key.isascii())
        if len(self.hidden_bytes) < len(self.hidden):
            self.hidden_bytes = (b"",)  # a non-ASCII key: always walk the body

    def read(
        self, raw: bytes | None, detail: Any
    ) -> tuple[str | None, bool, str | None, str | None]:
        """(body text, truncated, event, visitor_id) of a refused request's body;
        `detail` (the answer's) says which event of a batch was refused."""
        if raw is None:
            return None, False, None, None
        raw = _decoded(raw)
        index = _first_index(detail)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._lines(raw, index)
        event, visitor = _identify(_items(data), index)
        if self._nothing_to_hide(raw):
            return *_cut(raw), event, visitor  # as sent
        data = _hide(data, self.hidden, 0)
        event, visitor = _identify(_items(data), index)
        return *_cut(orjson.dumps(data)), event, visitor

    def _nothing_to_hide(self, raw: bytes) -> bool:
        """True when no key of the body can be a hidden one: an ASCII body without
        escapes, holding none of their names (str.lower() of some non-ASCII letters
        gives ASCII ones, so anything else is parsed and walked)."""
        if not raw.isascii() or b"\\u" in raw:
            return False
        lowered = raw.lower()
        return not any(key in lowered for key in self.hidden_bytes)

    def _lines(
        self, raw: bytes, index: int
    ) -> tuple[str, bool, str | None, str | None]:
        """NDJSON (or text that is no JSON): each line that parses is redacted."""
        if b"\n" not in raw.strip():
            return *_cut(raw), None, None
        shown: list[bytes] = []
        size = 0
        dropped = False
        items: list[Any] = []
        for piece in raw.split(b"\n"):
            item: Any = None
            if piece.strip():
                try:
                    item = _hide(orjson.loads(piece), self.hidden, 0)
                except orjson.JSONDecodeError:
                    pass
                else:
                    piece = orjson.dumps(item)
                items.append(item)
            if size <= BODY_LIMIT:
                shown.append(piece)
                size += len(piece) + 1
            else:
                dropped = True
                if len(items) > index:
                    break  # the text is cut already and the refused line is read
        event, visitor = _identify(items, index)
        text, truncated = _cut(b"\n".join(shown))
        return text, truncated or dropped, event, visitor


def _cut(data: bytes) -> tuple[str, bool]:
    """The first BODY_LIMIT bytes as text (invalid UTF-8 replaced), and whether cut."""
    if len(data) <= BODY_LIMIT:
        return data.decode("utf-8", "replace"), False
    return data[:BODY_LIMIT].decode("utf-8", "replace"), True


_BASE64 = re.compile(rb"[A-Za-z0-9+/=_-]+")


def _decoded(raw: bytes) -> bytes:
    """The body as the SDK meant it: a form's `data=` base64 field (PostHog), a base64
    body, and gzip inside either, decoded. Anything else is returned as it is."""
    data = raw
    if raw[:5] == b"data=" or b"&data=" in raw:
        fields = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
        data = fields.get("data", "").encode("latin-1")
    if data[:1] not in (b"{", b"[") and _BASE64.fullmatch(data.strip() or b"{"):
        try:
            data = base64.b64decode(data.strip() + b"==", altchars=b"-_")
        except (binascii.Error, ValueError):
            return raw
    if data[:2] == _GZIP_MAGIC:
        try:
            # Bounded: only what the record can show is needed.
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(
                data, 64 * BODY_LIMIT
            )
        except zlib.error:
            return raw
    if data is raw or data[:1] in (b"{", b"["):
        return data
    return raw


def _hide(value: Any, hidden: frozenset[str], depth: int) -> Any:
    """Credentials dropped and METRICS_REDACT_KEYS redacted, at any depth."""
    if depth > MAX_DEPTH:
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            lowered = key.lower() if isinstance(key, str) else key
            if lowered in CREDENTIAL_KEYS:
                continue
            out[key] = REDACTED if lowered in hidden else _hide(item, hidden, depth + 1)
        return out
    if isinstance(value, list):
        return [_hide(item, hidden, depth + 1) for item in value]
    return value


def _items(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("events", "batch"):
            items = data.get(key)
            if isinstance(items, list):
                # GA4: the visitor is on the envelope, the names on the events.
                visitor = data.get("client_id")
                if isinstance(visitor, str):
                    return [
                        {"client_id": visitor, **item}
                        if isinstance(item, dict)
                        else item
                        for item in items[:1000]
                    ]
                return items
    return [data]


def _identify(items: list[Any], index: int) -> tuple[str | None, str | None]:
    """(event, visitor_id) of the refused item (the first with a problem)."""
    if not items:
        return None, None
    item = items[index] if 0 <= index < len(items) else items[0]
    if not isinstance(item, dict):
        return None, None
    return _text(item, _EVENT_KEYS), _text(item, _VISITOR_KEYS)


def _text(item: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value[:MAX_FIELD]
    return None


def _first_index(detail: Any) -> int:
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("index"), int):
                index: int = item["index"]
                return index
    return 0
