"""Replay: the newest stored events back into the ring at start-up, and the last seq."""

from __future__ import annotations

import itertools
import logging
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from metrics_service import _native
from metrics_service.store import tail
from metrics_service.store.chunk import Columns, Entry, Packed
from metrics_service.store.columns import (
    Parser,
    add_entry,
    empty,
    extend_columns,
    parse_entry,
    scan,
    why_skipped,
)

logger = logging.getLogger("metrics_service")


class Replay(NamedTuple):
    entries: list[Entry]  # oldest first, at most the requested count
    last_seq: int  # the highest seq seen, 0 when there is none
    skipped: int  # lines that did not parse as stored events


def replay(path: Path, count: int) -> Replay:
    """The newest `count` stored events, and the highest seq found.

    With count 0 only the last seq is looked up (the newest line that parses).
    """
    found, last_seq, skipped = scan(tail.newest_lines(path, count), count, 0)
    found.reverse()
    # Seq order is ring order; a hand-edited file is the only way to be out of order.
    if any(a.seq >= b.seq for a, b in itertools.pairwise(found)):
        found.sort(key=lambda entry: entry.seq)
    return Replay(found, last_seq, skipped)


class Loaded(NamedTuple):
    parts: list[Columns | Packed]  # oldest first, at most the requested count in all
    last_seq: int  # the highest seq seen, 0 when there is none
    skipped: int  # lines that did not parse as stored events
    segments: list[Path] = []  # rotated segments read, newest first


def load(path: Path, count: int) -> Loaded:
    """replay() as columns for Ring.load, with the same entries, seq and skipped count.

    A block of lines is decoded by one msgspec call, which checks every line is
    JSON; a block with a line it rejects gets the full parse, line by line.
    """
    if count <= 0:
        found = replay(path, count)
        return Loaded([], found.last_seq, found.skipped, [])
    if _native.c is None:
        logger.warning(
            "replay runs without its C extension (built without a C compiler, or"
            " METRICS_PURE_PYTHON set): it takes longer"
        )
    parser = Parser()
    parts: list[Columns | Packed] = []  # newest block first
    have = skipped = last_seq = 0
    blocks = tail.sink_blocks(path)
    rest: Iterable[bytes] = ()
    for block in blocks:
        part, top, lost = parser.block(block)
        if have + len(part.seqs) < count:
            parts.append(part)
            have += len(part.seqs)
            last_seq = max(last_seq, top)
            skipped += lost
            continue
        # The block that completes the count: line by line as replay() stops.
        rest = itertools.chain(
            reversed(block[:-1].split(b"\n")),
            (line for more in blocks for line in reversed(more[:-1].split(b"\n"))),
        )
        break
    segments: list[Path] = []
    older, last_seq, lost = scan(
        itertools.chain(rest, tail.older_lines(path, count, segments)),
        count - have,
        last_seq,
    )
    skipped += lost
    oldest = empty()
    for entry in reversed(older):
        add_entry(oldest, entry)
    parts.append(oldest)
    parts.reverse()
    if not _in_order(parts):
        merged = empty()
        for part in parts:
            extend_columns(
                merged, _unpacked(part) if isinstance(part, Packed) else part
            )
        parts = [_sorted(merged)]
    return Loaded(parts, last_seq, skipped, segments)


def skipped_lines(path: Path, count: int, limit: int = 3) -> list[str]:
    """Where and why replay skipped lines of the sink: `file:offset: reason` for the
    newest `limit`, looking no further back than replay read (`count` good lines)."""
    found: list[str] = []
    good = 0
    if not tail.is_regular(path):
        return found
    try:
        for offset, block in tail.reverse_blocks_at(path):
            lines = block[:-1].split(b"\n")
            starts = list(itertools.accumulate((len(x) + 1 for x in lines), initial=0))
            for line, start in zip(reversed(lines), reversed(starts[:-1]), strict=True):
                reason = why_skipped(line)
                if reason is None:
                    good += parse_entry(line.removesuffix(b"\r"))[1] is not None
                    if good >= count:
                        return found
                    continue
                found.append(f"{path}:{offset + start}: {reason}")
                if len(found) >= limit:
                    return found
    except OSError as exc:
        found.append(f"{path}: could not be read again ({exc})")
    return found


def find_seq(path: Path, seq: int) -> str:
    """Where the line holding `seq` is, as `file:offset`, or the sink and its segments."""
    needle = b'"seq":%d' % seq
    if tail.is_regular(path):
        with open(path, "rb") as fh:
            offset = 0
            for line in fh:
                if needle in line:
                    return f"{path}:{offset}"
                offset += len(line)
    return f"{path} or one of its rotated segments"


def _in_order(parts: list[Columns | Packed]) -> bool:
    """True when the parts' seqs, one after the other, strictly increase."""
    last: int | None = None
    for part in parts:
        seqs = part.seqs
        if not seqs:
            continue
        if last is not None and seqs[0] <= last:
            return False
        if not all(map(operator.lt, seqs, itertools.islice(seqs, 1, None))):
            return False
        last = seqs[-1]
    return True


def _unpacked(part: Packed) -> Columns:
    text = part.text
    bounds = itertools.pairwise(itertools.chain((0,), part.ends))
    lines = [text[start:end] for start, end in bounds]
    events = list(map(part.names.__getitem__, memoryview(part.codes).cast("H")))
    return Columns(part.seqs, part.ts, events, bytearray(part.flags), {}, lines)


def _sorted(columns: Columns) -> Columns:
    """The columns in seq order (stable, as replay() sorts entries)."""
    order = sorted(range(len(columns.seqs)), key=columns.seqs.__getitem__)
    out = empty()
    out.seqs.extend(columns.seqs[i] for i in order)
    out.ts.extend(columns.ts[i] for i in order)
    out.events.extend(columns.events[i] for i in order)
    out.flags.extend(columns.flags[i] for i in order)
    out.lines.extend(columns.lines[i] for i in order)
    at = {old: new for new, old in enumerate(order)}
    out.odd.update((at[i], v) for i, v in columns.odd.items())
    return out
