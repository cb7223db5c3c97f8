"""What the commands (`stats`, `export`) show on a terminal: a progress bar on stderr,
and text from a foreign file made safe to print."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """A one-line bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() and total > 0
        self.total = total
        self._done = 0
        self._last = 0.0

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        self._done = done
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 30)
            self.stream.write(
                f"\r[{bar:<30}] {share:4.0%} {done / 1e6:,.0f}/{self.total / 1e6:,.0f} MB"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()


def printable(text: str) -> str:
    """`text` safe for a terminal: each character that is not printable (ESC, BEL
    and other controls, bidi overrides, zero-width and line separators) as its
    Python escape, so a foreign file cannot move the cursor, retitle the window or
    reverse what follows."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def json_printable(text: str) -> str:
    """JSON text with every non-printable character but its newlines as a \\u
    escape: the same JSON value, safe for a terminal."""
    if text.replace("\n", "").isprintable():
        return text
    return "".join(
        ch if ch == "\n" or ch.isprintable() else _json_escape(ch) for ch in text
    )


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a surrogate pair, as JSON writes characters past U+FFFF
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
