"""The ring's storage: an Entry, and a chunk of entries packed into flat buffers."""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Collection, Iterator
from itertools import accumulate
from operator import itemgetter
from typing import NamedTuple

from metrics_service import _native


class Entry(NamedTuple):
    """A stored event as the ring keeps it: the JSONL line plus what filters need."""

    seq: int
    ts: float  # `timestamp` as Unix seconds
    event: str
    visitor_id: str
    event_id: str | None
    line: bytes  # the stored JSON object, without the newline


Predicate = Callable[[Entry], bool]

CHUNK = 4096
_HAS_ID = 1
ODD = 2  # visitor_id / event_id cannot be read back from the line: kept aside
_VISITOR_KEY = b'"visitor_id":"'  # 14 bytes
_EVENT_ID_KEY = b'"event_id":"'  # 12 bytes
STEP = 256  # entries rebuilt at a time when walking backwards
_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__
EVENT_OF = itemgetter(2)  # Entry.event
FEW = 8  # up to this many names are counted one by one: a Counter costs more


def repacked(strings: list[str]) -> list[str]:
    """Equal strings allocated side by side; empties `strings`, which must hold the
    only references, so the originals are freed first (see Ring.compact)."""
    lengths = [len(text) for text in strings]
    joined = "".join(strings)
    strings.clear()
    out: list[str] = []
    at = 0
    for n in lengths:
        out.append(joined[at : at + n])
        at += n
    return out


def readback(visitor_id: str, event_id: str | None, line: bytes) -> int:
    """The entry's flags: _HAS_ID, and ODD when visitor_id / event_id cannot be read back."""
    # Readable back: the first `key` is followed by the raw value and a quote
    # (a value JSON had to escape differs from its raw bytes and fails here).
    flag = 0
    try:
        at = line.find(_VISITOR_KEY)
        ok = (
            at >= 0
            and '"' not in visitor_id
            and line.startswith(visitor_id.encode() + b'"', at + 14)
        )
        if event_id is not None:
            flag = _HAS_ID
            at = line.find(_EVENT_ID_KEY)
            ok = (
                ok
                and at >= 0
                and '"' not in event_id
                and line.startswith(event_id.encode() + b'"', at + 12)
            )
    except UnicodeEncodeError:
        ok = False
    return flag if ok else flag | ODD


def _verbatim(visitor_ids: tuple[str, ...], event_ids: tuple[str | None, ...]) -> bool:
    """True when no value has a character JSON escapes: each is its raw bytes in the line."""
    values = "".join(visitor_ids) + "".join(filter(None, event_ids))
    # isprintable() is false for every control character (and a few harmless others).
    return '"' not in values and "\\" not in values and values.isprintable()


class Columns(NamedTuple):
    """Entries as columns, oldest first, for Ring.load (a bulk load without tuples).

    flags[i] is _HAS_ID when the line has an event_id, plus ODD when visitor_id /
    event_id cannot be read back from the line, in which case odd[i] holds them.
    """

    seqs: array[int]
    ts: array[float]
    events: list[str]
    flags: bytearray
    odd: dict[int, tuple[str, str | None]]
    lines: list[bytes]


class Packed(NamedTuple):
    """Entries already laid out as a Chunk keeps them (replay's native path)."""

    seqs: array[int]
    ts: array[float]
    flags: bytes  # _HAS_ID or 0: no entry is odd
    codes: bytes  # native uint16 per entry, into names
    names: list[str]
    counts: list[int]  # entries per name
    text: bytes  # the lines joined
    ends: array[int]  # each line's end in text


class Chunk:
    """CHUNK entries packed into a few flat buffers: a few bytes each plus the line.

    Entry tuples, seq ints, ts floats and string objects would cost several times
    more per event; visitor_id and event_id are read back from the line on demand.
    """

    __slots__ = (
        "codes",
        "ends",
        "events",
        "flags",
        "index",
        "lines",
        "names",
        "odd",
        "seqs",
        "ts",
    )

    def __init__(self, entries: list[Entry], *, written: bool = False) -> None:
        """`written`: the lines are the collector's, whose first `"visitor_id":"` and
        `"event_id":"` are the real keys, so only the values need checking."""
        seqs, ts, events, visitor_ids, event_ids, lines = zip(*entries, strict=True)
        odd: dict[int, tuple[str, str | None]] = {}
        flags: bytes | bytearray
        if written and _verbatim(visitor_ids, event_ids):
            if None not in event_ids:
                flags = bytes([_HAS_ID]) * len(entries)
            else:
                flags = bytes([event_id is not None for event_id in event_ids])
        else:
            flags = bytearray(len(entries))
            for i, entry in enumerate(entries):
                flag = flags[i] = readback(entry.visitor_id, entry.event_id, entry.line)
                if flag & ODD:
                    odd[i] = (entry.visitor_id, entry.event_id)
            flags = bytes(flags)
        self._fill(
            array("q", seqs), array("d", ts), list(events), flags, odd, list(lines)
        )

    @classmethod
    def packed(
        cls,
        seqs: array[int],
        ts: array[float],
        events: list[str],
        flags: bytes,
        odd: dict[int, tuple[str, str | None]],
        lines: list[bytes],
    ) -> Chunk:
        """A chunk from columns whose flags are already known (see Columns)."""
        new = cls.__new__(cls)
        new._fill(seqs, ts, events, flags, odd, lines)
        return new

    @classmethod
    def adopt(cls, part: Packed) -> Chunk:
        """A chunk holding a Packed part's buffers as they are."""
        new = cls.__new__(cls)
        new._set(
            part.seqs,
            part.ts,
            part.ends,
            part.text,
            part.codes,
            part.names,
            part.flags,
            {},
        )
        return new

    def _fill(
        self,
        seqs: array[int],
        ts: array[float],
        events: list[str],
        flags: bytes,
        odd: dict[int, tuple[str, str | None]],
        lines: list[bytes],
    ) -> None:
        names = list(dict.fromkeys(events))
        index = {name: code for code, name in enumerate(names)}
        codes = array("H", map(index.__getitem__, events))
        ends = list(accumulate(map(len, lines)))
        offsets = array("I" if ends[-1] < 2**32 else "Q", ends)
        joined = b"".join(lines)
        self._set(seqs, ts, offsets, joined, codes.tobytes(), names, flags, odd)

    def _set(
        self,
        seqs: array[int],
        ts: array[float],
        ends: array[int],
        lines: bytes,
        events: bytes,
        names: list[str],
        flags: bytes,
        odd: dict[int, tuple[str, str | None]],
    ) -> None:
        """Keep the buffers, and derive the code view and name index from them."""
        self.seqs = seqs
        self.ts = ts
        self.ends = ends
        self.lines = lines
        self.events = events  # 2-byte codes, searched with rfind for `event=` filters
        self.codes = memoryview(events).cast("H")
        self.names = names
        self.index = {name: code for code, name in enumerate(names)}
        self.flags = flags
        self.odd = odd

    def __len__(self) -> int:
        return len(self.seqs)

    def copy(self) -> Chunk:
        """The same chunk in freshly allocated objects (see Ring.compact)."""
        new = Chunk.__new__(Chunk)
        new._set(
            array(self.seqs.typecode, self.seqs),
            array("d", self.ts),
            array(self.ends.typecode, self.ends),
            self.lines,  # large: malloc'd apart from small objects
            self.events,
            [(name + ".")[:-1] for name in self.names],
            self.flags,
            {i: ((v + ".")[:-1], e) for i, (v, e) in self.odd.items()},
        )
        return new

    def event_ids(self, lo: int) -> list[str]:
        """The non-empty event_ids of entries lo and on, oldest first."""
        if _native.event_ids is not None and not self.odd:
            found = _native.event_ids(self.lines, self.ends, self.flags, lo)
            if found is not None:
                return found
        lines, ends, flags = self.lines, self.ends, self.flags
        out: list[str] = []
        for i in range(lo, len(flags)):
            flag = flags[i]
            if not flag & _HAS_ID:
                continue
            if flag & ODD:
                event_id = self.odd[i][1]
            else:
                at = lines.find(_EVENT_ID_KEY, ends[i - 1] if i else 0) + 12
                event_id = lines[at : lines.index(b'"', at)].decode()
            if event_id:
                out.append(event_id)
        return out

    def entry(self, i: int) -> Entry:
        return self.slice(i, i + 1)[0]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi-1 as tuples again, oldest first."""
        lines, names, odd = self.lines, self.names, self.odd
        start = self.ends[lo - 1] if lo else 0
        out: list[Entry] = []
        append = out.append
        for i, end, seq, ts, code, flag in zip(
            range(lo, hi),
            self.ends[lo:hi],
            self.seqs[lo:hi],
            self.ts[lo:hi],
            self.codes[lo:hi],
            self.flags[lo:hi],
            strict=True,
        ):
            line = lines[start:end]
            start = end
            if flag & ODD:
                visitor_id, event_id = odd[i]
            else:
                at = line.find(_VISITOR_KEY) + 14
                visitor_id = line[at : line.index(b'"', at)].decode()
                if flag:
                    at = line.find(_EVENT_ID_KEY) + 12
                    event_id = line[at : line.index(b'"', at)].decode()
                else:
                    event_id = None
            append(_new(Entry, (seq, ts, names[code], visitor_id, event_id, line)))
        return out

    def gather(self, indexes: list[int]) -> list[Entry]:
        """The entries at these ascending indexes, rebuilt a run at a time."""
        out: list[Entry] = []
        k, count = 0, len(indexes)
        while k < count:
            first = last = indexes[k]
            k += 1
            while k < count and indexes[k] == last + 1:
                last = indexes[k]
                k += 1
            out.extend(self.slice(first, last + 1))
        return out

    def containing(self, needle: bytes, lower: int, *, odd: bool = True) -> set[int]:
        """Indexes (>= lower) whose line holds `needle`, plus every odd entry unless
        `odd` is false (a needle read from the line alone): a superset."""
        lines, ends = self.lines, self.ends
        found = {i for i in self.odd if i >= lower} if odd else set()
        pos = lines.find(needle, ends[lower - 1] if lower else 0)
        while pos >= 0:
            i = bisect.bisect_right(ends, pos)
            found.add(i)
            pos = lines.find(needle, ends[i]) if i + 1 < len(ends) else -1
        return found

    def positions(self, names: Collection[str], lower: int) -> Iterator[int]:
        """Indexes (>= lower) of entries named in `names`, newest first."""
        codes = [self.index[name] for name in names if name in self.index]
        if not codes:
            return
        buf = self.events
        patterns = [array("H", [code]).tobytes() for code in codes]
        found = [_rfind(buf, p, 2 * lower, len(buf)) for p in patterns]
        while True:
            best = max(found)
            if best < 0:
                return
            yield best // 2
            k = found.index(best)
            found[k] = _rfind(buf, patterns[k], 2 * lower, best)


def _rfind(buf: bytes, pattern: bytes, lo: int, hi: int) -> int:
    """The last 2-byte-aligned occurrence of `pattern` in buf[lo:hi], or -1."""
    while True:
        pos = buf.rfind(pattern, lo, hi)
        if pos < 0 or pos % 2 == 0:
            return pos
        hi = pos + 1
