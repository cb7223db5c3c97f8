"""The receive time, as stored in `received_at` (and `timestamp` by default)."""

from __future__ import annotations

import datetime as dt
import time
from typing import NamedTuple

from metrics_service.store.line import head

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def iso(moment: dt.datetime) -> str:
    """UTC ISO-8601 with millisecond precision and a Z, as JavaScript prints it."""
    return (
        moment.astimezone(UTC).replace(tzinfo=None).isoformat("T", "milliseconds") + "Z"
    )


class Received(NamedTuple):
    """The receive time: in integer microseconds, as Unix seconds, and as stored."""

    micros: int
    ts: float
    text: str
    iso: bytes
    head: bytes  # store/line.py head(text), made once per millisecond with text

    @property
    def moment(self) -> dt.datetime:
        # Only events that carry timestamp or sent_at need the datetime.
        return EPOCH + dt.timedelta(microseconds=self.micros)


_last_iso: tuple[int, str, bytes, bytes] = (-1, "", b"", b"")
_last_second: tuple[int, str] = (-1, "")
_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__


def received_now() -> Received:
    """Now, with the ISO text formatted once per millisecond rather than per event."""
    global _last_iso
    # Integer microseconds, so the millisecond key agrees exactly with the datetime.
    global _last_second
    micros = time.time_ns() // 1000
    millis = micros // 1000
    last = _last_iso
    if last[0] != millis:
        seconds = millis // 1000
        if _last_second[0] != seconds:
            # "YYYY-MM-DDTHH:MM:SS" changes once a second: iso() runs once a second.
            moment = EPOCH + dt.timedelta(seconds=seconds)
            _last_second = (seconds, iso(moment)[:-5])
        text = f"{_last_second[1]}.{millis % 1000:03d}Z"
        last = _last_iso = (millis, text, text.encode(), head(text))
    return _new(Received, (micros, micros / 1_000_000, last[1], last[2], last[3]))


def corrected(
    timestamp: dt.datetime | None, sent_at: dt.datetime | None, received: Received
) -> tuple[str, float]:
    """An event's stored timestamp and Unix seconds: its own (else the receive time),
    shifted by how far the client's clock was off at `sent_at`, as Segment does.

    Raises OverflowError when the shift leaves the datetime range."""
    moment = timestamp or received.moment
    if sent_at is not None:
        moment = moment + (received.moment - sent_at)
    return iso(moment), moment.timestamp()
