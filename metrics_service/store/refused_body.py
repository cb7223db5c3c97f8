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
# Deeper than this a refused body's values are replaced by TOO_DEEP: orjson writes at
# most 254 levels, and what lies deeper could hold a credential.
MAX_DEPTH = 200
TOO_DEEP = "[nested too deep]"
_VISITOR_KEYS = (
    "visitor_id",
    "anonymousId",
    "userId",
    "distinct_id",
    "client_id",
    "cid",
)
_EVENT_KEYS = ("event", "name", "en")  # en, cid: a gtag hit's
_GZIP_MAGIC = b"\x1f\x8b"


class BodyReader:
    """Reads bodies for one set of METRICS_REDACT_KEYS."""

    def __init__(self, redact_keys: Iterable[str] = ()) -> None:
        self.hidden = CREDENTIAL_KEYS | frozenset(k.lower() for k in redact_keys)
        # Searched for in the lowered body (ASCII names only; with a non-ASCII one,
        # None: bodies are always walked). Not a case-insensitive regex: its
        # alternation tries every name at every byte of the body.
        self.names: tuple[bytes, ...] | None = None
        if all(key.isascii() for key in self.hidden):
            self.names = tuple(key.encode() for key in sorted(self.hidden))
        # The keys an event's name and visitor are read from, less the hidden ones.
        self.event_keys = self._shown(_EVENT_KEYS)
        self.visitor_keys = self._shown(_VISITOR_KEYS)
        self.client_keys = self._shown(("client_id",))

    def _shown(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(key for key in keys if key.lower() not in self.hidden)

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
        event, visitor = self._identify(data, index)
        if self._nothing_to_hide(raw):
            text, truncated = _cut(raw)  # as sent
        else:
            text, truncated = _cut(orjson.dumps(_hide(data, self.hidden, 0)))
        return text, truncated, event, visitor

    def _nothing_to_hide(self, raw: bytes) -> bool:
        """True when no key of the body can be a hidden one: an ASCII body without
        escapes, holding none of their names (str.lower() of some non-ASCII letters
        gives ASCII ones, so anything else is parsed and walked)."""
        names = self.names
        # find(), not `in`: on CPython 3.11 bytes.__contains__ first tries its
        # argument as an int, raising and clearing a TypeError.
        if names is None or not raw.isascii() or raw.find(b"\\u") >= 0:
            return False
        lowered = raw.lower()
        for name in names:  # noqa: SIM110 (a loop: any() over a generator costs more)
            if lowered.find(name) >= 0:
                return False
        return True

    def _identify(self, data: Any, index: int) -> tuple[str | None, str | None]:
        """(event, visitor_id) of the refused item (the first with a problem), unless
        their key is one that is hidden."""
        envelope: dict[str, Any] = {}
        items = data
        if isinstance(data, dict):
            envelope = data
            items = [data]
            for key in ("events", "batch"):
                if isinstance(data.get(key), list):
                    items = data[key]
                    break
        if not isinstance(items, list) or not items:
            return None, None
        item = items[index] if 0 <= index < len(items) else items[0]
        if not isinstance(item, dict):
            return None, None
        # GA4: the visitor is on the envelope, the names on the events.
        return _text(item, self.event_keys), _text(item, self.visitor_keys) or _text(
            envelope, self.client_keys
        )

    def _lines(
        self, raw: bytes, index: int
    ) -> tuple[str, bool, str | None, str | None]:
        """NDJSON (or text that is no JSON): each line that parses is redacted."""
        if b"\n" not in raw.strip():
            return *_cut(raw), *self._identify([_form(raw)], 0)
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
                    item = _form(piece)
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
        event, visitor = self._identify(items, index)
        text, truncated = _cut(b"\n".join(shown))
        return text, truncated or dropped, event, visitor


def _text(item: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = item.get(key)
        if type(value) is str and value:
            return value[:MAX_FIELD]
    return None


# The start of a url-encoded line, as gtag sends a hit: `v=2&en=page_view&...`.
_FORM_START = re.compile(rb"\s*[A-Za-z0-9_.\-]+=")


def _form(line: bytes) -> dict[str, str] | None:
    """A url-encoded line's fields (read from its first BODY_LIMIT bytes), so a
    gtag hit's event and visitor can be named; None for any other text."""
    if _FORM_START.match(line) is None:
        return None
    text = line[:BODY_LIMIT].strip().decode("utf-8", "replace")
    return dict(parse_qsl(text, keep_blank_values=True))


def _cut(data: bytes) -> tuple[str, bool]:
    """The first BODY_LIMIT bytes as text (invalid UTF-8 replaced), and whether cut."""
    if len(data) <= BODY_LIMIT:
        return data.decode("utf-8", "replace"), False
    return data[:BODY_LIMIT].decode("utf-8", "replace"), True


_BASE64 = re.compile(rb"[A-Za-z0-9+/=_-]+")


def _decoded(raw: bytes) -> bytes:
    """The body as the SDK meant it: a form's `data=` base64 field (PostHog), a base64
    body, and gzip inside either, decoded. Anything else is returned as it is."""
    if raw[:1] == b"{" or raw[:1] == b"[":
        return raw  # JSON as sent: nothing to decode
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
        return TOO_DEEP
    if type(value) is dict:
        out = {}
        for key, item in value.items():
            lowered = key.lower()  # JSON keys are strings
            if lowered in hidden:  # credentials are hidden keys too
                if lowered not in CREDENTIAL_KEYS:
                    out[key] = REDACTED
            elif type(item) is dict or type(item) is list:
                out[key] = _hide(item, hidden, depth + 1)
            else:
                out[key] = item
        return out
    if type(value) is list:
        return [
            _hide(item, hidden, depth + 1)
            if type(item) is dict or type(item) is list
            else item
            for item in value
        ]
    return value


def _first_index(detail: Any) -> int:
    if isinstance(detail, list):
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("index"), int):
                index: int = item["index"]
                return index
    return 0
