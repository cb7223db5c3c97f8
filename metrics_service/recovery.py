"""Start-up work on the sink: repair a torn tail, find the last seq, replay into the ring."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import logging
import os
import stat
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import orjson

from .buffer import Entry
from .rotation import readable_segments

logger = logging.getLogger("metrics_service")

CHUNK = 256 * 1024


class Replay(NamedTuple):
    entries: list[Entry]  # oldest first, at most the requested count
    last_seq: int  # the highest seq seen, 0 when there is none
    skipped: int  # lines that did not parse as stored events


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def repair_torn_tail(path: Path) -> int:
    """Move a final fragment without a newline to `<path>.torn`; returns its size.

    The fragment is appended to the .torn file (and flushed) before the sink is
    truncated, so a crash during the repair can duplicate it there but never lose it.
    """
    if not is_regular(path):
        return 0
    with open(path, "r+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return 0
        cut = _last_newline_end(fh, end)
        fh.seek(cut)
        fragment = fh.read(end - cut)
        torn = path.with_name(path.name + ".torn")
        with open(torn, "ab") as out:
            out.write(fragment + b"\n")
            out.flush()
            os.fsync(out.fileno())
        fh.truncate(cut)
        fh.flush()
        os.fsync(fh.fileno())
    logger.warning(
        "%s ended in a torn line: moved %d bytes to %s", path, len(fragment), torn
    )
    return len(fragment)


def _last_newline_end(fh: BinaryIO, end: int) -> int:
    """The offset just after the last newline before `end`, or 0."""
    pos = end
    while pos > 0:
        step = min(CHUNK, pos)
        pos -= step
        fh.seek(pos)
        index = fh.read(step).rfind(b"\n")
        if index >= 0:
            return pos + index + 1
    return 0


def reverse_lines(path: Path) -> Iterator[bytes]:
    """Complete lines of `path`, newest first, read backwards in chunks.

    A final fragment without a newline is not a line and is never returned.
    """
    with open(path, "rb") as fh:
        pos = _last_newline_end(fh, fh.seek(0, os.SEEK_END))
        rest = b""
        first = True
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            fh.seek(pos)
            parts = (fh.read(step) + rest).split(b"\n")
            if first:
                parts.pop()  # the nothing after the final newline
                first = False
            rest = parts[0]
            yield from reversed(parts[1:])
        if rest:
            yield rest


def _segment_lines(segment: Path, count: int) -> list[bytes]:
    """The last `count` lines of a segment, newest first (a .gz is read through)."""
    if segment.suffix != ".gz":
        out: list[bytes] = []
        for line in reverse_lines(segment):
            out.append(line)
            if len(out) >= count:
                break
        return out
    newest: deque[bytes] = deque(maxlen=count)
    with gzip.open(segment, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):
                newest.append(line[:-1])
    newest.reverse()
    return list(newest)


def newest_lines(path: Path, count: int) -> Iterator[bytes]:
    """Lines newest first: the sink from its end, then rotated segments, newest first."""
    sources: list[Path] = []
    if is_regular(path):
        sources.append(path)
    sources.extend(reversed(readable_segments(path)))
    for source in sources:
        try:
            if source == path:
                yield from reverse_lines(source)
            else:
                yield from _segment_lines(source, max(count, 1))
        except (OSError, EOFError) as exc:
            logger.warning("could not read %s for replay: %s", source, exc)


def parse_entry(line: bytes) -> tuple[int | None, Entry | None]:
    """The line's seq (None when unreadable) and its ring entry (None when incomplete)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None, None
    event, visitor_id, event_id = (
        obj.get(k) for k in ("event", "visitor_id", "event_id")
    )
    if not (isinstance(event, str) and isinstance(visitor_id, str)):
        return seq, None
    try:
        ts = _timestamp(obj.get("timestamp"))
    except (TypeError, ValueError):
        return seq, None
    if not isinstance(event_id, str):
        event_id = None
    return seq, Entry(seq, ts, event, visitor_id, event_id, line)


def _timestamp(raw: object) -> float:
    if not isinstance(raw, str):
        raise TypeError("timestamp")
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def replay(path: Path, count: int) -> Replay:
    """The newest `count` stored events, and the highest seq found.

    With count 0 only the last seq is looked up (the newest line that parses).
    """
    found: list[Entry] = []
    skipped = 0
    last_seq = 0
    for line in newest_lines(path, count):
        if not line.strip():
            continue
        seq, entry = parse_entry(line)
        if seq is not None and seq > last_seq:
            last_seq = seq
        if len(found) >= count and last_seq:
            break
        if entry is None:
            skipped += 1
        elif len(found) < count:
            found.append(entry)
    found.reverse()
    # Seq order is ring order; a hand-edited file is the only way to be out of order.
    if any(a.seq >= b.seq for a, b in itertools.pairwise(found)):
        found.sort(key=lambda entry: entry.seq)
    return Replay(found, last_seq, skipped)
