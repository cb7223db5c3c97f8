from __future__ import annotations

import contextlib
import datetime as dt
import errno
import gzip
import logging
import os
import re
import shutil
import threading
from pathlib import Path

import orjson

logger = logging.getLogger("metrics_service")


def segment_pattern(path: Path) -> re.Pattern[str]:
    """Matches the names of `path`'s rotated segments: `<stem>-<UTC time>-<first seq>`."""
    stem, suffix = re.escape(path.stem), re.escape(path.suffix)
    return re.compile(rf"^{stem}-(\d{{8}}T\d{{6}})-(\d+){suffix}(\.gz)?$")


def segments(path: Path) -> list[Path]:
    """Rotated segments of `path` (`.jsonl` and `.jsonl.gz`), oldest first."""
    pattern = segment_pattern(path)
    found: list[tuple[str, int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent or Path(".")):
            match = pattern.match(entry.name)
            if match:
                found.append((match[1], int(match[2]), Path(entry.path)))
    found.sort(key=lambda item: (item[0], item[1], item[2].name))
    return [item[2] for item in found]


def readable_segments(path: Path) -> list[Path]:
    """Like segments(), but one file per segment: while a segment is being compressed
    its plain file is the complete copy, so a `.gz` twin is left out."""
    found = segments(path)
    plain = {p.name for p in found if p.suffix != ".gz"}
    return [p for p in found if p.suffix != ".gz" or p.name[:-3] not in plain]


def first_seq(path: Path, key: str = "seq") -> int:
    """The seq (or `key`) on the first line of `path`, or 0 when there is none to read."""
    try:
        with open(path, "rb") as fh:
            line = fh.readline(1024 * 1024)
        return int(orjson.loads(line)[key])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0


class Rotator:
    """Renames a full sink aside and compresses it in a background thread.

    Only the rename runs on the caller's thread; gzip and pruning old segments
    happen in one worker at a time so a burst of rotations cannot pile up threads.
    A segment is named after the `key` (seq, or the quarantine's id) of its first line.
    """

    def __init__(self, path: Path, max_bytes: int, keep: int, key: str = "seq") -> None:
        self.path = path
        self.key = key
        self.max_bytes = max_bytes
        self.keep = keep
        self._lock = threading.Lock()
        self._queue: list[Path] = []
        self._worker: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def due(self, size: int, incoming: int) -> bool:
        return self.max_bytes > 0 and size > 0 and size + incoming > self.max_bytes

    def rotate(self) -> Path:
        """Rename the active file to a segment name; the caller reopens the path."""
        now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(
            f"{self.path.stem}-{now}-{first_seq(self.path, self.key)}{self.path.suffix}"
        )
        if target.exists() or target.with_name(target.name + ".gz").exists():
            # Only a first line without a seq can repeat a name; never overwrite.
            raise FileExistsError(errno.EEXIST, "segment exists", str(target))
        os.rename(self.path, target)
        self.compress_later(target)
        return target

    def compress_later(self, segment: Path | None = None) -> None:
        """Queue `segment` for gzip (None: only prune) on the background worker."""
        with self._lock:
            if segment is not None:
                self._queue.append(segment)
            self._idle.clear()
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._work, name="metrics-rotate", daemon=True
                )
                self._worker.start()

    def resume(self) -> None:
        """Compress segments a previous run renamed but did not finish gzipping."""
        partial = f".{self.path.stem}-*{self.path.suffix}.gz.partial"
        for leftover in self.path.parent.glob(partial):
            with contextlib.suppress(OSError):
                leftover.unlink()
        for segment in segments(self.path):
            if segment.suffix != ".gz":
                self.compress_later(segment)
        if self.max_bytes > 0:
            self.compress_later(None)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued segment is compressed and old ones pruned."""
        return self._idle.wait(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                segment = self._queue.pop(0) if self._queue else None
            if segment is not None:
                try:
                    compress(segment)
                except OSError as exc:
                    logger.warning("could not compress %s: %s", segment, exc)
                continue
            self.prune()
            with self._lock:
                if not self._queue:
                    self._worker = None
                    self._idle.set()
                    return

    def prune(self) -> None:
        if self.max_bytes <= 0:
            return
        old = segments(self.path)
        # A segment is one rotation; its .jsonl and .jsonl.gz twins count once.
        names: dict[str, list[Path]] = {}
        for segment in old:
            names.setdefault(segment.name.removesuffix(".gz"), []).append(segment)
        excess = list(names.values())[: max(0, len(names) - self.keep)]
        for group in excess:
            for segment in group:
                with contextlib.suppress(OSError):
                    segment.unlink()


def compress(segment: Path) -> Path:
    """Gzip `segment` beside itself, then remove the plain file."""
    target = segment.with_name(segment.name + ".gz")
    # A dot-name keeps the half-written file out of `metrics*.jsonl*` globs.
    partial = segment.with_name(f".{segment.name}.gz.partial")
    with open(segment, "rb") as src, gzip.open(partial, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    with open(partial, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, target)
    segment.unlink()
    return target
