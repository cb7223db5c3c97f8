"""Reading the sink from its end: the one backward reader, and torn-tail repair."""

from __future__ import annotations

import gzip
import logging
import os
import stat
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from metrics_service.store.rotation import readable_segments

logger = logging.getLogger("metrics_service")

BLOCK = 1024 * 1024  # about a ring chunk's worth of lines
STEP = 256 * 1024  # looking back for a newline


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
        step = min(STEP, pos)
        pos -= step
        fh.seek(pos)
        index = fh.read(step).rfind(b"\n")
        if index >= 0:
            return pos + index + 1
    return 0


def reverse_lines(path: Path) -> Iterator[bytes]:
    """Complete lines of `path`, newest first; a final fragment without a newline is
    not a line and is never returned."""
    for block in reverse_blocks(path):
        yield from reversed(block[:-1].split(b"\n"))


def segment_lines(segment: Path, count: int) -> list[bytes]:
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


def older_lines(
    path: Path, count: int, seen: list[Path] | None = None
) -> Iterator[bytes]:
    """The rotated segments' lines, newest first; each segment read is added to `seen`."""
    segments = list(reversed(readable_segments(path)))
    yield from _source_lines(path, segments, count, seen)


def _source_lines(
    path: Path, sources: list[Path], count: int, seen: list[Path] | None = None
) -> Iterator[bytes]:
    for source in sources:
        if seen is not None:
            seen.append(source)
        try:
            if source == path:
                yield from reverse_lines(source)
            else:
                yield from segment_lines(source, max(count, 1))
        except (OSError, EOFError) as exc:
            logger.warning("could not read %s for replay: %s", source, exc)


def reverse_blocks(path: Path) -> Iterator[bytes]:
    """Runs of whole lines (each ending in a newline), newest run first."""
    for _, block in reverse_blocks_at(path):
        yield block


def reverse_blocks_at(path: Path) -> Iterator[tuple[int, bytes]]:
    """reverse_blocks() with each block's byte offset in the file."""
    with open(path, "rb") as fh:
        end = pos = _last_newline_end(fh, fh.seek(0, os.SEEK_END))
        while pos > 0:
            pos -= min(BLOCK, pos)
            fh.seek(pos)
            # The partial line in front is read again with the next block rather
            # than carried over and joined on: each block is copied once, and
            # fewer fresh 256 KiB buffers mean fewer page faults.
            data = fh.read(end - pos)
            cut = data.find(b"\n") + 1 if pos > 0 else 0
            if cut < len(data):
                yield pos + cut, data[cut:] if cut else data
                end = pos + cut


def sink_blocks(path: Path) -> Iterator[bytes]:
    if not is_regular(path):
        return
    try:
        yield from reverse_blocks(path)
    except (OSError, EOFError) as exc:
        logger.warning("could not read %s for replay: %s", path, exc)
