"""The quarantine: refused ingest requests, kept in bounded memory and in their own
JSONL file beside the sink (`<stem>.rejected.jsonl`), never in the sink itself.

The front door (http/frontdoor.py) records each 400, 413, 415 and 422 of an ingest
path here; GET /api/metrics/behavior/rejected (read/rejected.py), the stream and
/wait read it. Recording never fails the answer: a record that cannot be written to
the file is counted (`write_errors`) and kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from metrics_service.ingest.clock import received_now
from metrics_service.settings import BY_NAME, Config, ConfigError
from metrics_service.store import tail
from metrics_service.store.refused_body import REDACTED, BodyReader
from metrics_service.store.rotation import Rotator, readable_segments, segment_pattern
from metrics_service.store.sink import Sink

logger = logging.getLogger("metrics_service")

STATUSES = frozenset({400, 413, 415, 422})
# Refusals are recorded, and their lines written, at most once per this many seconds:
# a flood of refusals costs one write per batch, a lone one is recorded at once.
# Recorded in a row, sixty refusals cost about a third of what each costs recorded
# between other requests, which leave the cache cold. Every read settles them first.
FLUSH_EVERY = 0.01
# A batch is recorded at once when it reaches this many refusals, or this many bytes
# of their bodies and problems.
BATCH_COUNT = 64
BATCH_BYTES = 1 << 20
# Memory holds at most `capacity` records and capacity x this many bytes: a 422's
# detail lists every problem of a batch, so a record can be larger than its body.
RECORD_BUDGET = 16 * 1024


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
        secrets=(config.ingest_token, config.read_token),
        rotate_bytes=config.rotate_bytes,
        rotate_keep=config.rotate_keep,
    )


class Rejection(NamedTuple):
    """One record: what filters read, and its JSON line (without the newline)."""

    id: int
    status: int
    event: str | None
    visitor_id: str | None
    test_id: str | None
    line: bytes


class Request(NamedTuple):
    """What the front door knows of a refused request."""

    path: str
    status: int
    detail: Any
    headers: list[tuple[bytes, bytes]]
    body: bytes | None
    test_id: str | None


Listener = Callable[[Rejection], None]
_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__


class Quarantine:
    def __init__(
        self,
        capacity: int,
        path: Path | None,
        *,
        redact_keys: Iterable[str] = (),
        secrets: Iterable[str | None] = (),
        rotate_bytes: int = 0,
        rotate_keep: int = 10,
    ) -> None:
        """`secrets`: the configured tokens, replaced wherever they would appear in
        a record (a body that is no JSON is otherwise kept as sent)."""
        self.capacity = capacity
        self.path = path
        self.reader = BodyReader(redact_keys)
        self.secrets = [s for s in secrets if s]
        # As each appears inside a JSON string of the record's line.
        self.secret_bytes = [orjson.dumps(s)[1:-1] for s in self.secrets]
        self._records: deque[Rejection] = deque()
        self.budget = capacity * RECORD_BUDGET
        self.bytes = 0
        self._last_id = 0
        self._recorded = 0  # since start-up or the last reset, evicted ones included
        self.write_errors = 0
        self.listeners: list[Listener] = []
        # Refusals waiting to be recorded (with when they were received), and lines
        # waiting for the file: both taken once per FLUSH_EVERY.
        self.deferred: list[tuple[Request, str]] = []
        self.deferred_bytes = 0
        self.pending: list[bytes] = []
        self.flushed = float("-inf")  # the loop's time of the last write
        # The loop a drain is scheduled on, if any: one that has closed since (an ASGI
        # test client without its lifespan runs each request on its own) never runs it.
        self.scheduled: asyncio.AbstractEventLoop | None = None
        self.rotator: Rotator | None = None
        self.sink: Sink | None = None
        if path is not None and capacity > 0:
            self.rotator = Rotator(path, rotate_bytes, rotate_keep, key="id")
            self.sink = Sink(path, rotator=self.rotator)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def records(self) -> deque[Rejection]:
        self.settle()
        return self._records

    @property
    def last_id(self) -> int:
        self.settle()
        return self._last_id

    @property
    def recorded(self) -> int:
        self.settle()
        return self._recorded

    def start(self) -> None:
        """Repair a torn last line and continue the ids of the file. The file itself
        is created by the first refusal."""
        if self.path is None or self.rotator is None:
            return
        try:
            tail.repair_torn_tail(self.path)
            self._last_id = max(self._last_id, _last_id(self.path))
        except OSError as exc:
            logger.warning("cannot read the quarantine file %s: %s", self.path, exc)
        self.rotator.resume()

    def close(self) -> None:
        self.drain()
        if self.sink is not None:
            self.sink.close()

    def defer(self, request: Request) -> None:
        """Record one refusal with the next batch (see FLUSH_EVERY)."""
        if self.capacity <= 0:
            return
        deferred = self.deferred
        deferred.append((request, received_now().text))
        if request.body is not None:
            self.deferred_bytes += len(request.body)
        if type(request.detail) is list:  # a batch's problems: ~1 KiB each in memory
            self.deferred_bytes += len(request.detail) << 10
        if len(deferred) >= BATCH_COUNT or self.deferred_bytes > BATCH_BYTES:
            self.settle()  # bounds the memory a flood of large bodies holds
        else:
            self._schedule()

    def settle(self) -> None:
        """Record the deferred refusals, in the order they came."""
        deferred = self.deferred
        if not deferred:
            return
        self.deferred = []
        self.deferred_bytes = 0
        for request, received_at in deferred:
            try:
                self._record(request, received_at)
            except Exception:
                logger.exception(
                    "could not record a refused request to %s", request.path
                )

    def record(self, request: Request) -> Rejection | None:
        """Keep one refusal now; None when the quarantine is off."""
        if self.capacity <= 0:
            return None
        self.settle()
        return self._record(request, received_now().text)

    def _record(self, request: Request, received_at: str) -> Rejection:
        self._last_id += 1
        body, truncated, event, visitor = self.reader.read(request.body, request.detail)
        record: dict[str, Any] = {
            "id": self._last_id,
            "received_at": received_at,
            "path": request.path,
            "status": request.status,
            "detail": request.detail,
            "content_type": None,
            "user_agent": None,
            "origin": None,
        }
        for name, value in request.headers:
            key = _HEADER_FIELDS.get(name)
            if key is not None and record[key] is None:
                record[key] = _header_text(value)
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
        if self.secret_bytes and any(line.find(s) >= 0 for s in self.secret_bytes):
            line = orjson.dumps(_scrub(record, self.secrets))
        found = _new(
            Rejection,
            (self._last_id, request.status, event, visitor, request.test_id, line),
        )
        self._keep(found)
        self._write(line)
        for listener in list(self.listeners):
            try:
                listener(found)
            except Exception:  # recorded all the same; the other listeners still hear
                logger.exception("a quarantine listener failed on record %d", found.id)
        return found

    def clear(self) -> int:
        records = self.records  # settled: what was refused before is cleared too
        cleared = len(records)
        records.clear()
        self.bytes = 0
        self._recorded = 0
        return cleared

    def _keep(self, found: Rejection) -> None:
        records = self._records
        records.append(found)
        self.bytes += len(found.line)
        self._recorded += 1
        while len(records) > self.capacity or (
            self.bytes > self.budget and len(records) > 1
        ):
            self.bytes -= len(records.popleft().line)

    def _write(self, line: bytes) -> None:
        if self.sink is not None:
            self.pending.append(line)
            self._schedule()

    def _schedule(self) -> None:
        """Drain once FLUSH_EVERY has passed since the last write (at once without
        a running loop: a direct call)."""
        scheduled = self.scheduled
        if scheduled is not None and not scheduled.is_closed():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.drain()
            return
        self.scheduled = loop
        wait = self.flushed + FLUSH_EVERY - loop.time()
        if wait > 0:
            loop.call_later(wait, self.drain)
        else:
            loop.call_soon(self.drain)

    def drain(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.flushed = asyncio.get_running_loop().time()
        try:
            self.settle()  # while `scheduled`: their lines wait for the flush below
            self.flush()
        finally:
            self.scheduled = None  # whatever failed, the next refusal schedules again

    def flush(self) -> None:
        """Append the pending lines, whole, in one write."""
        pending = self.pending
        if not pending or self.sink is None:
            return
        data = b"\n".join(pending) + b"\n"
        count = len(pending)
        pending.clear()
        try:
            self.sink.write(data)
        except Exception as exc:  # not only OSError: a rotation's thread may not start
            before, self.write_errors = self.write_errors, self.write_errors + count
            if before == 0 or before // 1000 != self.write_errors // 1000:
                logger.warning(
                    "quarantine file: %s (%d records not written)",
                    exc,
                    self.write_errors,
                )


def _scrub(value: Any, secrets: list[str]) -> Any:
    """`value` with every secret in its strings (keys too) replaced by REDACTED."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_scrub(k, secrets): _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(item, secrets) for item in value]
    return value


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
