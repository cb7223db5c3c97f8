"""The events the benchmark sends and the sink it replays."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

# ~150 bytes on the wire once "@ID@" is a 36-character event_id.
EVENT_TEMPLATE = (
    b'{"visitor_id":"v-8f3a2c91d4","event":"page_view","event_id":"@ID@",'
    b'"metadata":{"path":"/pricing","ref":"/","w":1280}}'
)
RARE_EVENT = "purchase"  # 1 in 100 of the replayed events: the `event=` filter


def event_name(i: int) -> str:
    k = i % 100
    if k < 50:
        return "page_view"
    if k < 75:
        return "click"
    if k < 85:
        return "scroll"
    if k < 93:
        return "add_to_cart"
    if k < 99:
        return "form_submit"
    return RARE_EVENT


def write_sink(path: Path, count: int) -> None:
    """`count` stored lines shaped like the ones single-event ingest writes."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    names = [event_name(i).encode() for i in range(100)]
    with open(path, "wb") as fh:
        chunk: list[bytes] = []
        stamp = b""
        for i in range(count):
            if i % 1000 == 0:
                moment = start + dt.timedelta(seconds=i // 1000)
                stamp = moment.strftime("%Y-%m-%dT%H:%M:%S").encode()
            at = b"%s.%03dZ" % (stamp, i % 1000)
            chunk.append(
                b'{"seq":%d,"received_at":"%s","timestamp":"%s","event":"%s",'
                b'"visitor_id":"v-%010d","event_id":"%08x-0000-4000-8000-%012d",'
                b'"metadata":{"path":"/pricing","ref":"/","w":1280},"user_agent":null}\n'
                % (i + 1, at, at, names[i % 100], i % 20_000, i % 65536, i)
            )
            if len(chunk) >= 10_000:
                fh.write(b"".join(chunk))
                chunk.clear()
        fh.write(b"".join(chunk))
