from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson


class SinkError(OSError):
    """The sink could not take a write; the message names the cause."""


class Sink:
    """The append-only JSONL file. Every write is whole lines or nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)

    def write(self, data: bytes) -> None:
        """Append `data` (whole lines) or raise SinkError leaving the file as it was."""
        if self._fd is None:
            try:
                self.open()
            except OSError as exc:
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
            if written:
                # Never leave half a line behind for `tail -f | jq`.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, before)
            raise SinkError(exc.errno, _describe(exc, self.path)) from exc
        self._size = before + written

    def fsync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def last_seq(self) -> int:
        """The highest seq in the file's last complete line, or 0."""
        for line in reversed(read_tail_lines(self.path, 1)):
            try:
                return int(orjson.loads(line)["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        return 0


def read_tail_lines(path: Path, count: int, chunk: int = 64 * 1024) -> list[bytes]:
    """The last `count` complete lines of `path`, oldest first, read from the end."""
    if not path.exists():
        return []
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= count:
            step = min(chunk, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.split(b"\n")
    lines.pop()  # what follows the last newline: empty, or a torn fragment
    if pos > 0:
        lines.pop(0)  # may be the tail of a line that started before `pos`
    return [line for line in lines[-count:] if line.strip()]


def _describe(exc: OSError, path: Path) -> str:
    reason = exc.strerror or str(exc)
    return f"cannot write {path}: {reason}"
