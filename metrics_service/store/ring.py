from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import accumulate
from operator import itemgetter
from typing import NamedTuple

import orjson

from metrics_service import _native


class Entry(NamedTuple):
    """A stored event as the ring keeps it: the JSONL line plus what filters need."""

    seq: int
    ts: float  # `timestamp` as Unix seconds
    event: str
    visitor_id: str
    event_id: str | None
    line: bytes  # the stored JSON object, without the newline

    def as_dict(self) -> dict[str, object]:
        value: dict[str, object] = orjson.loads(self.line)
        return value


Predicate = Callable[[Entry], bool]

CHUNK = 4096
_HAS_ID = 1
ODD = 2  # visitor_id / event_id cannot be read back from the line: kept aside
_VISITOR_KEY = b'"visitor_id":"'  # 14 bytes
_EVENT_ID_KEY = b'"event_id":"'  # 12 bytes
_STEP = 256  # entries rebuilt at a time when walking backwards
_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__
_EVENT = itemgetter(2)  # Entry.event
_FEW = 8  # up to this many names are counted one by one: a Counter costs more


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
    """Entries already laid out as a _Chunk keeps them (replay's native path)."""

    seqs: array[int]
    ts: array[float]
    flags: bytes  # _HAS_ID or 0: no entry is odd
    codes: bytes  # native uint16 per entry, into names
    names: list[str]
    counts: list[int]  # entries per name
    text: bytes  # the lines joined
    ends: array[int]  # each line's end in text


class _Chunk:
    """CHUNK entries packed into a few flat buffers (~25 bytes each plus the line).

    Entry tuples, seq ints, ts floats and string objects would cost ~200 bytes per
    event; visitor_id and event_id are read back from the line on demand instead.
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
    ) -> _Chunk:
        """A chunk from columns whose flags are already known (see Columns)."""
        new = cls.__new__(cls)
        new._fill(seqs, ts, events, flags, odd, lines)
        return new

    @classmethod
    def adopt(cls, part: Packed) -> _Chunk:
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

    def copy(self) -> _Chunk:
        """The same chunk in freshly allocated objects (see Ring.compact)."""
        new = _Chunk.__new__(_Chunk)
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

    def containing(self, needle: bytes, lower: int) -> set[int]:
        """Indexes (>= lower) whose line holds `needle`, plus every odd entry: a superset."""
        lines, ends = self.lines, self.ends
        found = {i for i in self.odd if i >= lower}
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


class Ring:
    """The newest `capacity` entries in seq order, with per-event counts kept on the way in and out.

    New entries wait in a small deque of tuples; every `chunk` of them is packed into
    a _Chunk, and eviction drops packed chunks from the front a whole chunk at a time.
    """

    def __init__(self, capacity: int, *, chunk: int = CHUNK) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 1 <= chunk <= 65536:  # names are 2-byte codes within a chunk
            raise ValueError("chunk must be between 1 and 65536")
        self.capacity = capacity
        self.evicted = 0
        self._chunk = chunk
        self._packed: deque[_Chunk] = deque()
        self._skip = 0  # entries at the front of _packed[0] already evicted
        self._packed_len = 0
        self._hot: deque[Entry] = deque()
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return self._packed_len + len(self._hot)

    def __iter__(self) -> Iterator[Entry]:
        for n, chunk in enumerate(list(self._packed)):
            for lo in range(self._skip if n == 0 else 0, len(chunk), _STEP):
                yield from chunk.slice(lo, min(lo + _STEP, len(chunk)))
        yield from list(self._hot)

    def __reversed__(self) -> Iterator[Entry]:
        yield from reversed(list(self._hot))
        chunks = list(self._packed)
        for n in range(len(chunks) - 1, -1, -1):
            chunk = chunks[n]
            lower = self._skip if n == 0 else 0
            for hi in range(len(chunk), lower, -_STEP):
                yield from reversed(chunk.slice(max(lower, hi - _STEP), hi))

    def extend(
        self, entries: Iterable[Entry], *, written: bool = False, passed: int = 0
    ) -> None:
        """Add entries, newest last; `written` as for _Chunk (the collector's lines).

        `passed`: entries older than these that went by without being added, as the
        ring would have evicted them at once; they only count as evicted.
        """
        self.evicted += passed
        if not isinstance(entries, list):
            entries = list(entries)
        if len(entries) >= self.capacity:
            # Everything there now, and the oldest of these, would be evicted at once.
            self.evicted += len(self) + len(entries) - self.capacity
            self.clear()
            entries = entries[len(entries) - self.capacity :]
        hot = self._hot
        hot.extend(entries)
        counts = self._counts
        if len(entries) <= _FEW:
            for entry in entries:
                counts[entry.event] = counts.get(entry.event, 0) + 1
        else:
            # Counter counts in C; a group has a handful of names.
            for name, n in Counter(map(_EVENT, entries)).items():
                counts[name] = counts.get(name, 0) + n
        while len(hot) >= self._chunk:
            self._pack(written)
        excess = len(self) - self.capacity
        if excess > 0:
            self._evict(excess)

    def load(self, parts: Iterable[Columns | Packed]) -> None:
        """Fill an empty ring from parts, oldest first, packed straight into chunks (replay)."""
        if len(self):
            raise ValueError("load needs an empty ring")
        counts = self._counts
        named: Iterable[tuple[str, int]]
        for part in parts:
            if isinstance(part, Packed):
                chunks = [_Chunk.adopt(part)]
                named = zip(part.names, part.counts, strict=True)
            else:
                chunks = self._chunks(part)
                named = Counter(part.events).items()
            for name, n in named:
                counts[name] = counts.get(name, 0) + n
            for chunk in chunks:
                self._packed.append(chunk)
                self._packed_len += len(chunk)
        excess = len(self) - self.capacity
        if excess > 0:
            self._evict(excess)

    def _chunks(self, columns: Columns) -> list[_Chunk]:
        seqs, ts, events, flags, odd, lines = columns
        size = self._chunk
        parts: dict[int, dict[int, tuple[str, str | None]]] = {}
        for i, value in odd.items():
            parts.setdefault(i // size, {})[i % size] = value
        return [
            _Chunk.packed(
                seqs[lo : lo + size],
                ts[lo : lo + size],
                events[lo : lo + size],
                bytes(flags[lo : lo + size]),
                parts.get(lo // size, {}),
                lines[lo : lo + size],
            )
            for lo in range(0, len(seqs), size)
        ]

    def event_ids(self, limit: int) -> list[str]:
        """The event_ids among the newest `limit` entries, oldest first."""
        hot = list(self._hot)[-limit:] if limit > 0 else []
        # As replay always did: an empty id is no id.
        parts = [[entry.event_id for entry in hot if entry.event_id]]
        left = limit - len(hot)
        chunks = list(self._packed)
        for n in range(len(chunks) - 1, -1, -1):
            if left <= 0:
                break
            chunk = chunks[n]
            lo = max(self._skip if n == 0 else 0, len(chunk) - left)
            parts.append(chunk.event_ids(lo))
            left -= len(chunk) - lo
        return [event_id for part in reversed(parts) for event_id in part]

    def _pack(self, written: bool = False) -> None:
        hot = self._hot
        packed = _Chunk([hot.popleft() for _ in range(self._chunk)], written=written)
        self._packed.append(packed)
        self._packed_len += len(packed)
        # Keep memory bounded while a long extend() (replay) runs.
        excess = len(self) - self.capacity
        if excess > 0:
            self._evict(excess)

    def _evict(self, count: int) -> None:
        self.evicted += count
        while count > 0 and self._packed:
            first = self._packed[0]
            start = self._skip
            take = min(count, len(first) - start)
            if take <= _FEW:
                names = first.names
                for code in first.codes[start : start + take]:
                    self._forget(names[code], 1)
            else:
                for code, n in Counter(first.codes[start : start + take]).items():
                    self._forget(first.names[code], n)
            self._skip += take
            self._packed_len -= take
            count -= take
            if self._skip == len(first):
                self._packed.popleft()
                self._skip = 0
        if count > _FEW:
            popleft = self._hot.popleft
            gone = [popleft() for _ in range(count)]
            for name, n in Counter(map(_EVENT, gone)).items():
                self._forget(name, n)
        elif count > 0:
            for _ in range(count):
                self._forget(self._hot.popleft().event, 1)

    def _forget(self, name: str, n: int) -> None:
        left = self._counts[name] - n
        if left:
            self._counts[name] = left
        else:
            del self._counts[name]

    def compact(self) -> None:
        """Reallocate the packed chunks' small objects, after a bulk load's garbage is gone.

        Replay builds ~1M tuples and strings, then frees them; the chunks' few small
        objects allocated among them would keep most of those 1 MiB allocator arenas
        (hundreds of MiB of RSS) alive. Fresh copies land in the arenas still in use.
        """
        self._packed = deque(chunk.copy() for chunk in self._packed)
        self._counts = dict(self._counts)

    def clear(self) -> int:
        cleared = len(self)
        self._packed.clear()
        self._packed_len = 0
        self._skip = 0
        self._hot.clear()
        self._counts.clear()
        return cleared

    def counts(self) -> dict[str, int]:
        """Events per name now in the ring; the dict is live, copy before mutating."""
        return self._counts

    def newest(
        self,
        limit: int,
        predicate: Predicate | None = None,
        *,
        events: Collection[str] | None = None,
    ) -> list[Entry]:
        """Up to `limit` entries, newest first.

        `events` (names, any of) is served from a per-chunk index without looking at
        other entries; `predicate`, if also given, is checked on those only.
        """
        out: list[Entry] = []
        if limit <= 0:
            return out
        source = reversed(self) if events is None else self._reversed_named(events)
        for entry in source:
            if predicate is None or predicate(entry):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def select(
        self,
        events: Collection[str] | None = None,
        after: int | None = None,
        *,
        visitor_id: str | None = None,
        event_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Entry]:
        """Candidates for a filter, oldest first: every entry named in `events` (any of)
        with a seq above `after`, this visitor_id and event_id and since <= ts <= until,
        and maybe a few more (the caller still checks each one). None: no condition.

        Served from the event index, the seq order, a byte search of the packed lines
        and the ts column, so only candidates are rebuilt (what `Filters.scan` needs).
        """
        needles = []
        try:
            if visitor_id is not None:
                needles.append(b'"visitor_id":' + orjson.dumps(visitor_id))
            if event_id is not None:
                needles.append(b'"event_id":' + orjson.dumps(event_id))
        except orjson.JSONEncodeError:
            needles = []  # cannot have been stored: the caller's check finds nothing
        if needles or since is not None or until is not None:
            lo = -math.inf if since is None else since
            hi = math.inf if until is None else until
            return self._select_packed(
                events, after, needles, (lo, hi), visitor_id, event_id
            )
        if events is None:
            return list(self) if after is None else self.after(after)
        out: list[Entry] = []
        for entry in self._reversed_named(events):
            if after is not None and entry.seq <= after:
                break
            out.append(entry)
        out.reverse()
        return out

    def _select_packed(
        self,
        events: Collection[str] | None,
        after: int | None,
        needles: list[bytes],
        window: tuple[float, float],
        visitor_id: str | None,
        event_id: str | None,
    ) -> list[Entry]:
        lo, hi = window
        timed = lo != -math.inf or hi != math.inf
        out: list[Entry] = []
        for n, chunk in enumerate(list(self._packed)):
            lower = self._skip if n == 0 else 0
            if after is not None:
                if chunk.seqs[-1] <= after:
                    continue
                lower = max(lower, bisect.bisect_right(chunk.seqs, after, lower))
            hits: set[int] | None = None
            for needle in needles:
                found = chunk.containing(needle, lower)
                hits = found if hits is None else hits & found
            if events is not None:
                named = set(chunk.positions(events, lower))
                hits = named if hits is None else hits & named
            if timed:
                ts = chunk.ts
                if hits is None:
                    hits = {i for i in range(lower, len(chunk)) if lo <= ts[i] <= hi}
                else:
                    hits = {i for i in hits if lo <= ts[i] <= hi}
            if hits is None:
                out.extend(chunk.slice(lower, len(chunk)))
            else:
                out.extend(chunk.gather(sorted(hits)))
        out.extend(
            entry
            for entry in list(self._hot)
            if (after is None or entry.seq > after)
            and (events is None or entry.event in events)
            and visitor_id in (None, entry.visitor_id)
            and event_id in (None, entry.event_id)
            and lo <= entry.ts <= hi
        )
        return out

    def _reversed_named(self, names: Collection[str]) -> Iterator[Entry]:
        if not any(name in self._counts for name in names):
            return
        for entry in reversed(list(self._hot)):
            if entry.event in names:
                yield entry
        chunks = list(self._packed)
        for n in range(len(chunks) - 1, -1, -1):
            chunk = chunks[n]
            for i in chunk.positions(names, self._skip if n == 0 else 0):
                yield chunk.entry(i)

    def after(self, seq: int) -> list[Entry]:
        """Entries with a seq greater than `seq`, oldest first."""
        hot = list(self._hot)
        if not hot or hot[0].seq > seq:
            # The answer may start in the packed chunks: find the oldest one needed.
            chunks = list(self._packed)
            out: list[Entry] = []
            start_chunk = len(chunks)
            while start_chunk > 0:
                chunk = chunks[start_chunk - 1]
                if chunk.seqs[-1] <= seq:
                    break
                start_chunk -= 1
            for n in range(start_chunk, len(chunks)):
                chunk = chunks[n]
                lower = self._skip if n == 0 else 0
                first = bisect.bisect_right(chunk.seqs, seq, lower)
                out.extend(chunk.slice(first, len(chunk)))
            out.extend(hot)
            return out
        start = bisect.bisect_right([entry.seq for entry in hot], seq)
        return hot[start:]
