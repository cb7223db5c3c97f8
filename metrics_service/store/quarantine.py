"""The quarantine: refused ingest requests, kept in bounded memory and in their own
JSONL file beside the sink (`<stem>.rejected.jsonl`), never in the sink itself.

The front door (http/frontdoor.py) records each 400, 413, 415 and 422 of an ingest
path here; GET /api/metrics/behavior/rejected (read/rejected.py), the stream and
/wait read it. Recording never fails the answer: a record that cannot be written to
the file is counted (`write_errors`) and kept in memory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from metrics_service.ingest.clock import received_now
from metrics_service.settings import BY_NAME, Config, ConfigError
from metrics_service.store import tail
from metrics_service.store.rotation import Rotator, readable_segments, segment_pattern
from metrics_service.store.sink import Sink

logger = logging.getLogger("metrics_service")

STATUSES = frozenset({400, 413, 415, 422})
BODY_LIMIT = 4096  # bytes of body text kept per record
# Memory holds at most `capacity` records and capacity x this many bytes: a 422's
# detail lists every problem of a batch, so a record can be larger than its body.
RECORD_BUDGET = 16 * 1024
MAX_FIELD = 256  # characters of an `event` or `visitor_id` read from a refused body
REDACTED = "[redacted]"
# SDK credentials in a body: dropped from the record at any depth (case-insensitive).
CREDENTIAL_KEYS = frozenset({"writekey", "api_key", "token", "api_secret"})
MAX_DEPTH = 256
_VISITOR_KEYS = ("visitor_id", "anonymousId", "userId", "distinct_id", "client_id")
_EVENT_KEYS = ("event", "name")
_GZIP_MAGIC = b"\x1f\x8b"


def clash(sink: Path, rejected: Path) -> str | None:
    """Why `rejected` cannot be the quarantine's file next to `sink`, or None."""
    if rejected.resolve() == sink.resolve():
        return f"{rejected} is the sink itself (METRICS_JSONL)"
    same_folder = rejected.resolve().parent == sink.resolve().parent
    if same_folder and segment_pattern(sink).match(rejected.name):
        return f"{rejected.name} would be taken for one of the sink's rotated segments"
    return None


def quarantine_for(config: Config) -> Quarantine:
    """The quarantine the settings ask for. Raises ConfigError naming
    METRICS_REJECT_JSONL for a file that would mix with the sink's."""
    path = config.rejected_file
    problem = None if path is None else clash(config.jsonl, path)
    if problem is not None:
        raise ConfigError(BY_NAME["reject_jsonl"].var, problem)
    return Quarantine(
        config.reject_capacity,
        path,
        redact_keys=config.redact_keys,
        rotate_bytes=config.rotate_bytes,
        rotate_keep=config.rotate_keep,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """One record: what filters read, and its JSON line (without the newline)."""

    id: int
    status: int
    event: str | None
    visitor_id: str | None
    test_id: str | None
    line: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """What the front door knows of a refused request."""

    path: str
    status: int
    detail: Any
    headers: list[tuple[bytes, bytes]]
    body: bytes | None
    test_id: str | None


Listener = Callable[[Rejection], None]


class Quarantine:
    def __init__(
        self,
        capacity: int,
        path: Path | None,
        *,
        redact_keys: Iterable[str] = (),
        rotate_bytes: int = 0,
        rotate_keep: int = 10,
    ) -> None:
        self.capacity = capacity
        self.path = path
        self.redact_keys = frozenset(k.lower() for k in redact_keys)
        self.hidden = CREDENTIAL_KEYS | self.redact_keys
        self.hidden_bytes = tuple(key.encode() for key in self.hidden if key.isascii())
        if len(self.hidden_bytes) < len(self.hidden):
            self.hidden_bytes = (b"",)  # a non-ASCII key: always walk the body
        self.records: deque[Rejection] = deque()
        self.budget = capacity * RECORD_BUDGET
        self.bytes = 0
        self.last_id = 0
        self.recorded = 0  # since start-up or the last reset, evicted ones included
        self.write_errors = 0
        self.listeners: list[Listener] = []
        self.rotator: Rotator | None = None
        self.sink: Sink | None = None
        if path is not None and capacity > 0:
            self.rotator = Rotator(path, rotate_bytes, rotate_keep, key="id")
            self.sink = Sink(path, rotator=self.rotator)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def start(self) -> None:
        """Repair a torn last line and continue the ids of the file. The file itself
        is created by the first refusal."""
        if self.path is None or self.rotator is None:
            return
        try:
            tail.repair_torn_tail(self.path)
            self.last_id = max(self.last_id, _last_id(self.path))
        except OSError as exc:
            logger.warning("cannot read the quarantine file %s: %s", self.path, exc)
        self.rotator.resume()

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()

    def record(self, request: Request) -> Rejection | None:
        """Keep one refusal; None when the quarantine is off."""
        if self.capacity <= 0:
            return None
        self.last_id += 1
        body, truncated, event, visitor = self._body(request)
        record: dict[str, Any] = {
            "id": self.last_id,
            "received_at": received_now().text,
            "path": request.path,
            "status": request.status,
            "detail": request.detail,
        }
        record.update(_headers(request.headers))
        if request.test_id is not None:
            record["test_id"] = request.test_id
        record["visitor_id"] = visitor
        record["event"] = event
        record["body"] = body
        record["truncated"] = truncated
        try:
            line = orjson.dumps(record)
        except TypeError:  # a detail orjson cannot write: keep its text
            record["detail"] = str(request.detail)
            line = orjson.dumps(record)
        found = Rejection(
            self.last_id, request.status, event, visitor, request.test_id, line
        )
        self._keep(found)
        self._write(line)
        for listener in list(self.listeners):
            listener(found)
        return found

    def clear(self) -> int:
        cleared = len(self.records)
        self.records.clear()
        self.bytes = 0
        self.recorded = 0
        return cleared

    def _keep(self, found: Rejection) -> None:
        records = self.records
        records.append(found)
        self.bytes += len(found.line)
        self.recorded += 1
        while len(records) > self.capacity or (
            self.bytes > self.budget and len(records) > 1
        ):
            self.bytes -= len(records.popleft().line)

    def _write(self, line: bytes) -> None:
        if self.sink is None:
            return
        try:
            self.sink.write(line + b"\n")
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1 or self.write_errors % 1000 == 0:
                logger.warning(
                    "quarantine file: %s (%d records not written)",
                    exc,
                    self.write_errors,
                )

    def _body(
        self, request: Request
    ) -> tuple[str | None, bool, str | None, str | None]:
        """(body text, truncated, event, visitor_id) of a refused request's body."""
        raw = request.body
        if raw is None:
            return None, False, None, None
        raw = _decoded(raw)
        index = _first_index(request.detail)
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


def _headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "content_type": None,
        "user_agent": None,
        "origin": None,
    }
    for name, value in headers:
        key = _HEADER_FIELDS.get(name)
        if key is not None and found[key] is None:
            found[key] = _header_text(value)
    return found


_HEADER_FIELDS = {
    b"content-type": "content_type",
    b"user-agent": "user_agent",
    b"origin": "origin",
}


def _header_text(value: bytes) -> str:
    cut = value[:512]
    try:
        return cut.decode()
    except UnicodeDecodeError:
        return cut.decode("latin-1")


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


def _last_id(path: Path) -> int:
    """The id on the file's last complete line (or its newest segment's), else 0."""
    sources = [path, *reversed(readable_segments(path))]
    for source in sources:
        try:
            lines = (
                tail.reverse_lines(source)
                if source == path
                else iter(tail.segment_lines(source, 1))
            )
            for line in lines:
                try:
                    return int(orjson.loads(line)["id"])
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                    continue
        except (OSError, EOFError):
            continue
    return 0
