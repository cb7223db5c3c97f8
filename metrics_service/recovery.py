"""Start-up work on the sink: repair a torn tail, find the last seq, replay into the ring."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import logging
import operator
import os
import re
import stat
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import orjson

from .buffer import Columns, Entry, readback
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
    yield from _source_lines(path, sources, count)
    yield from older_lines(path, count)


def older_lines(path: Path, count: int) -> Iterator[bytes]:
    """The rotated segments' lines, newest first."""
    yield from _source_lines(path, list(reversed(readable_segments(path))), count)


def _source_lines(path: Path, sources: list[Path], count: int) -> Iterator[bytes]:
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
    found, last_seq, skipped = _scan(newest_lines(path, count), count, 0)
    found.reverse()
    # Seq order is ring order; a hand-edited file is the only way to be out of order.
    if any(a.seq >= b.seq for a, b in itertools.pairwise(found)):
        found.sort(key=lambda entry: entry.seq)
    return Replay(found, last_seq, skipped)


# The start of a line as the service writes it (see ingest.to_record). Blocks with a
# backslash or a control character anywhere get the full parse, so here strings are
# their raw bytes and every key is spelled out.
_LINE = re.compile(
    rb'\{"seq":([1-9][0-9]{0,17}),"received_at":"[^"]*",'
    rb'"timestamp":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})'
    rb'\.([0-9]{3})Z","event":"([^"]*)","visitor_id":"[^"]*"'
    rb'(,"event_id":"[^"]*")?,"metadata":'
)
_LINES = re.compile(b"^" + _LINE.pattern, re.MULTILINE)
_ESCAPED = bytes([*range(10), *range(11, 32), 92])  # controls but newline, backslash
_UNSEEN = -(1 << 64)  # below any epoch second
_KEYS = (b'"seq"', b'"timestamp"', b'"event"', b'"visitor_id"', b'"event_id"')


class Loaded(NamedTuple):
    columns: Columns  # oldest first, at most the requested count
    last_seq: int  # the highest seq seen, 0 when there is none
    skipped: int  # lines that did not parse as stored events


def _empty() -> Columns:
    return Columns(array("q"), array("d"), [], bytearray(), {}, [])


def _add_entry(columns: Columns, entry: Entry) -> None:
    flag = readback(entry.visitor_id, entry.event_id, entry.line)
    if flag & 2:  # buffer._ODD
        columns.odd[len(columns.seqs)] = (entry.visitor_id, entry.event_id)
    columns.seqs.append(entry.seq)
    columns.ts.append(entry.ts)
    columns.events.append(entry.event)
    columns.flags.append(flag)
    columns.lines.append(entry.line)


def _extend(columns: Columns, more: Columns) -> None:
    base = len(columns.seqs)
    columns.odd.update((base + i, v) for i, v in more.odd.items())
    columns.seqs.extend(more.seqs)
    columns.ts.extend(more.ts)
    columns.events.extend(more.events)
    columns.flags.extend(more.flags)
    columns.lines.extend(more.lines)


class _Parser:
    """Blocks of whole lines into columns: the regex for lines shaped as the service
    writes them, parse_entry for any other line (the same result, slower)."""

    def __init__(self) -> None:
        self.seconds: dict[bytes, int | None] = {}  # "YYYY-MM-DDTHH:MM:SS" → epoch
        self.names: dict[bytes, str] = {}
        self._seen = bytearray()  # the block's lines that got the full parse

    def block(self, block: bytes) -> tuple[Columns, int, int]:
        """The block's entries (oldest first), its highest seq, and its skipped lines."""
        if not block.isascii():
            try:
                block.decode()
            except UnicodeDecodeError:
                return self._slow(block)
        if len(block.translate(None, _ESCAPED)) != len(block):
            return self._slow(block)
        # The regex reads only the fields before "metadata"; one C-level parse of
        # the whole block proves the rest is JSON too, or every line gets the full
        # parse, so a hand-edited broken line is never served from the ring.
        try:
            orjson.loads(b"[" + block.rstrip(b"\n").replace(b"\n", b",") + b"]")
        except orjson.JSONDecodeError:
            return self._slow(block)
        self._seen.clear()
        whole = self._whole(block)
        if whole is not None:
            return whole
        out = _empty()
        seqs, ts, events, flags, lines = (
            out.seqs,
            out.ts,
            out.events,
            out.flags,
            out.lines,
        )
        seconds, names = self.seconds, self.names
        match_at, find = _LINE.match, block.find
        odd: list[bytes] = []  # lines for the full parse
        pos = 0
        fast = ids = 0
        top = skipped = 0
        size = len(block)
        while pos < size:
            end = find(b"\n", pos)
            match = match_at(block, pos, end)
            if match is None or block[end - 1] != 125:  # "}"
                odd.append(block[pos:end])
                pos = end + 1
                continue
            seq, second, milli, event, event_id = match.groups()
            base = seconds.get(second, _UNSEEN)
            if base == _UNSEEN:
                base = seconds[second] = _epoch(second)
            if base is None:
                odd.append(block[pos:end])
                pos = end + 1
                continue
            if odd:
                top, skipped = self._slow_lines(odd, out, top, skipped)
            seqs.append(int(seq))
            ts.append((base * 1000 + int(milli)) / 1000)
            name = names.get(event)
            if name is None:
                name = names[event] = event.decode()
            events.append(name)
            if event_id is None:
                flags.append(0)
            else:
                flags.append(1)  # buffer._HAS_ID
                ids += 1
            lines.append(block[pos:end])
            pos = end + 1
            fast += 1
        if odd:
            top, skipped = self._slow_lines(odd, out, top, skipped)
        for key in _KEYS:
            expected = ids if key == b'"event_id"' else fast
            if block.count(key) != expected + self._seen.count(key):
                return self._slow(block)
        if seqs:
            top = max(top, max(seqs))
        return out, top, skipped

    def _whole(self, block: bytes) -> tuple[Columns, int, int] | None:
        """The common case, every line shaped as the service writes it, with no
        Python-level loop over the lines; None when some line is not."""
        found = _LINES.findall(block)
        lines = block[:-1].split(b"\n")
        count = len(found)
        if not count or count != len(lines) or count != block.count(b"}\n"):
            return None
        ids = count - [row[4] for row in found].count(b"")
        # A key again anywhere (even nested) means the full parse, where the last
        # duplicate wins; `"event` counts both "event" and "event_id".
        if block.count(b'"event') != count + ids:
            return None
        for key in (b'"seq"', b'"timestamp"', b'"visitor_id"'):
            if block.count(key) != count:
                return None
        seq_texts, seconds_texts, millis, names, event_ids = zip(*found, strict=True)
        seconds = self.seconds
        for second in set(seconds_texts).difference(seconds):
            seconds[second] = _epoch(second)
        bases = list(map(seconds.__getitem__, seconds_texts))
        if None in bases:
            return None
        known = self.names
        for name in set(names).difference(known):
            known[name] = name.decode()
        seqs = array("q", map(int, seq_texts))
        ts = array(
            "d",
            [(b * 1000 + int(m)) / 1000 for b, m in zip(bases, millis, strict=True)],  # type: ignore[operator]
        )
        out = Columns(
            seqs,
            ts,
            list(map(known.__getitem__, names)),
            bytearray(map(bool, event_ids)),  # buffer._HAS_ID or 0
            {},
            lines,
        )
        return out, max(seqs), 0

    def _slow_lines(
        self, slow: list[bytes], out: Columns, top: int, skipped: int
    ) -> tuple[int, int]:
        self._seen += b"\n".join(slow)
        for line in slow:
            if not line.strip():
                continue
            seq, entry = parse_entry(line)
            if seq is not None and seq > top:
                top = seq
            if entry is None:
                skipped += 1
            else:
                _add_entry(out, entry)
        slow.clear()
        return top, skipped

    def _slow(self, block: bytes) -> tuple[Columns, int, int]:
        out = _empty()
        top, skipped = self._slow_lines(block[:-1].split(b"\n"), out, 0, 0)
        return out, top, skipped


def _epoch(second: bytes) -> int | None:
    try:
        moment = dt.datetime.fromisoformat(second.decode() + "+00:00")
    except ValueError:
        return None
    return int(moment.timestamp())


def _reverse_blocks(path: Path) -> Iterator[bytes]:
    """Runs of whole lines (each ending in a newline), newest run first."""
    with open(path, "rb") as fh:
        pos = _last_newline_end(fh, fh.seek(0, os.SEEK_END))
        rest = b""
        while pos > 0:
            step = min(CHUNK, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + rest
            cut = data.find(b"\n") + 1 if pos > 0 else 0
            rest = data[:cut]
            if cut < len(data):
                yield data[cut:]
        if rest:
            yield rest


def _sink_blocks(path: Path) -> Iterator[bytes]:
    if not is_regular(path):
        return
    try:
        yield from _reverse_blocks(path)
    except (OSError, EOFError) as exc:
        logger.warning("could not read %s for replay: %s", path, exc)


def _scan(
    lines: Iterable[bytes], need: int, last_seq: int
) -> tuple[list[Entry], int, int]:
    """replay()'s loop: up to `need` entries newest first, the last seq, skipped lines."""
    found: list[Entry] = []
    skipped = 0
    for line in lines:
        if not line.strip():
            continue
        seq, entry = parse_entry(line)
        if seq is not None and seq > last_seq:
            last_seq = seq
        if len(found) >= need and last_seq:
            break
        if entry is None:
            skipped += 1
        elif len(found) < need:
            found.append(entry)
    return found, last_seq, skipped


def load(path: Path, count: int) -> Loaded:
    """replay() as columns for Ring.load, with the same entries, seq and skipped count.

    Lines shaped as the service writes them are read a block at a time with one
    regex, once one parse of the whole block has shown it is all JSON; any other
    line gets the full parse.
    """
    if count <= 0:
        found = replay(path, count)
        return Loaded(_empty(), found.last_seq, found.skipped)
    parser = _Parser()
    parts: list[Columns] = []  # newest block first
    have = skipped = last_seq = 0
    blocks = _sink_blocks(path)
    rest: Iterable[bytes] = ()
    for block in blocks:
        columns, top, lost = parser.block(block)
        if have + len(columns.seqs) < count:
            parts.append(columns)
            have += len(columns.seqs)
            last_seq = max(last_seq, top)
            skipped += lost
            continue
        # The block that completes the count: line by line as replay() stops.
        rest = itertools.chain(
            reversed(block[:-1].split(b"\n")),
            (line for more in blocks for line in reversed(more[:-1].split(b"\n"))),
        )
        break
    tail, last_seq, lost = _scan(
        itertools.chain(rest, older_lines(path, count)), count - have, last_seq
    )
    skipped += lost
    out = _empty()
    for entry in reversed(tail):
        _add_entry(out, entry)
    for columns in reversed(parts):
        _extend(out, columns)
    seqs = out.seqs
    if not all(map(operator.lt, seqs, itertools.islice(seqs, 1, None))):
        out = _sorted(out)
    return Loaded(out, last_seq, skipped)


def _sorted(columns: Columns) -> Columns:
    """The columns in seq order (stable, as replay() sorts entries)."""
    order = sorted(range(len(columns.seqs)), key=columns.seqs.__getitem__)
    out = _empty()
    out.seqs.extend(columns.seqs[i] for i in order)
    out.ts.extend(columns.ts[i] for i in order)
    out.events.extend(columns.events[i] for i in order)
    out.flags.extend(columns.flags[i] for i in order)
    out.lines.extend(columns.lines[i] for i in order)
    at = {old: new for new, old in enumerate(order)}
    out.odd.update((at[i], v) for i, v in columns.odd.items())
    return out
