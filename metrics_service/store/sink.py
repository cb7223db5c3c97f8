from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from pathlib import Path

from metrics_service.store.rotation import Rotator

logger = logging.getLogger("metrics_service")


class SinkError(OSError):
    """The sink could not take a write; the message names the cause (and is its str:
    the errno is in `errno`, not repeated in the text)."""

    def __str__(self) -> str:
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


class Sink:
    """The append-only JSONL file. Every write is whole lines or nothing.

    Before each write the configured path is checked against the open file, so a
    sink renamed, deleted or truncated from outside (logrotate, a person) is
    reopened or recreated instead of feeding an unlinked file.
    """

    def __init__(self, path: Path, *, rotator: Rotator | None = None) -> None:
        self.path = path
        self.rotator = rotator
        self._fd: int | None = None
        self._size = 0
        self._identity: tuple[int, int] | None = None
        self._regular = True
        # Guards swapping the descriptor against a background fsync dup()-ing it.
        self._fd_lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def regular(self) -> bool:
        """False for a character device such as /dev/full or /dev/null."""
        return self._regular

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        info = os.fstat(fd)
        with self._fd_lock:
            old, self._fd = self._fd, fd
        self._size = info.st_size
        self._identity = (info.st_dev, info.st_ino)
        self._regular = stat.S_ISREG(info.st_mode)
        if old is not None:
            _close(old, sync=True)

    def close(self) -> None:
        with self._fd_lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            _close(fd, sync=self._regular)

    def write(self, data: bytes) -> int:
        """Append `data` (whole lines) or raise SinkError leaving the file as it was.

        Returns the file's size before the write, for `cut_back`."""
        try:
            self._prepare(len(data))
        except OSError as exc:
            self.close()
            raise SinkError(exc.errno, _describe(exc, self.path)) from exc
        fd = self._fd
        assert fd is not None
        before = self._size
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, view[written:])
        except OSError as exc:
            if written and self._regular:
                # Never leave half a line behind for `tail -f | jq`.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)
            # Reopen on the next write: the cause (a full disk, a lost mount) may clear.
            self.close()
            raise SinkError(exc.errno, _describe(exc, self.path)) from exc
        self._size = before + written
        return before

    def cut_back(self, size: int) -> None:
        """Truncate the file back to `size`: a write that must not count (its fsync
        failed). On failure the sink is closed, to be reopened by the next write."""
        with self._fd_lock:
            fd = self._fd
            if fd is None or not self._regular:
                return
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                logger.error(
                    "could not cut %s back to %d bytes: %s", self.path, size, exc
                )
                return
            self._size = size

    def _prepare(self, incoming: int) -> None:
        """Make sure the descriptor is the file at `path` now, rotating if it is full."""
        if self._fd is None:
            self.open()
        else:
            try:
                info = os.stat(self.path)
            except FileNotFoundError:
                info = None
            if info is None or (info.st_dev, info.st_ino) != self._identity:
                logger.warning("%s was moved or deleted; reopening it", self.path)
                self.open()
            elif self._regular and info.st_size < self._size:
                logger.warning("%s was truncated; appending at its new end", self.path)
                self._size = info.st_size
        rotator = self.rotator
        if rotator is not None and self._regular and rotator.due(self._size, incoming):
            try:
                segment = rotator.rotate()
            except OSError as exc:
                logger.warning("could not rotate %s: %s", self.path, exc)
            else:
                logger.info("rotated %s to %s", self.path, segment.name)
                self.open()

    def fsync(self) -> None:
        """Flush to disk; safe to call from another thread while writes go on."""
        with self._fd_lock:
            if self._fd is None or not self._regular:
                return
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _close(fd: int, *, sync: bool) -> None:
    if sync:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def _describe(exc: OSError, path: Path) -> str:
    reason = exc.strerror or str(exc)
    return f"cannot write {path}: {reason}"
