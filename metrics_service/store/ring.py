"""The ring buffer: the newest N stored events in seq order, with counts per name."""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator

import orjson

from metrics_service.store.chunk import (
    CHUNK,
    EVENT_OF,
    FEW,
    STEP,
    Chunk,
    Columns,
    Entry,
    Packed,
    Predicate,
)


class Ring:
    """The newest `capacity` entries in seq order, with per-event counts kept on the way in and out.

    New entries wait in a small deque of tuples; every `chunk` of them is packed into
    a Chunk, and eviction drops packed chunks from the front a whole chunk at a time.
    """

    def __init__(self, capacity: int, *, chunk: int = CHUNK) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if not 1 <= chunk <= 65536:  # names are 2-byte codes within a chunk
            raise ValueError("chunk must be between 1 and 65536")
        self.capacity = capacity
        self.evicted = 0
        self._chunk = chunk
        self._packed: deque[Chunk] = deque()
        self._skip = 0  # entries at the front of _packed[0] already evicted
        self._packed_len = 0
        self._hot: deque[Entry] = deque()
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return self._packed_len + len(self._hot)

    def __iter__(self) -> Iterator[Entry]:
        for n, chunk in enumerate(list(self._packed)):
            for lo in range(self._skip if n == 0 else 0, len(chunk), STEP):
                yield from chunk.slice(lo, min(lo + STEP, len(chunk)))
        yield from list(self._hot)

    def __reversed__(self) -> Iterator[Entry]:
        yield from reversed(list(self._hot))
        chunks = list(self._packed)
        for n in range(len(chunks) - 1, -1, -1):
            chunk = chunks[n]
            lower = self._skip if n == 0 else 0
            for hi in range(len(chunk), lower, -STEP):
                yield from reversed(chunk.slice(max(lower, hi - STEP), hi))

    def extend(
        self, entries: Iterable[Entry], *, written: bool = False, passed: int = 0
    ) -> None:
        """Add entries, newest last; `written` as for Chunk (the collector's lines).

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
        if len(entries) <= FEW:
            for entry in entries:
                counts[entry.event] = counts.get(entry.event, 0) + 1
        else:
            # Counter counts in C; a group has a handful of names.
            for name, n in Counter(map(EVENT_OF, entries)).items():
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
                chunks = [Chunk.adopt(part)]
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

    def _chunks(self, columns: Columns) -> list[Chunk]:
        seqs, ts, events, flags, odd, lines = columns
        size = self._chunk
        parts: dict[int, dict[int, tuple[str, str | None]]] = {}
        for i, value in odd.items():
            parts.setdefault(i // size, {})[i % size] = value
        return [
            Chunk.packed(
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
        packed = Chunk([hot.popleft() for _ in range(self._chunk)], written=written)
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
            if take <= FEW:
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
        if count > FEW:
            popleft = self._hot.popleft
            gone = [popleft() for _ in range(count)]
            for name, n in Counter(map(EVENT_OF, gone)).items():
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

        Replay builds a tuple and strings per line, then frees them; the chunks' few small
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
        test_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[Entry]:
        """Candidates for a filter, oldest first: every entry named in `events` (any of)
        with a seq above `after`, this visitor_id, event_id and test_id and since <= ts
        <= until, and maybe a few more (the caller still checks each one). None: no
        condition.

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
        tagged = None
        if test_id is not None:
            try:
                # Not kept apart like visitor_id: an entry without it in its line,
                # odd or not, does not have it.
                tagged = b'"test_id":' + orjson.dumps(test_id)
            except orjson.JSONEncodeError:
                return []
        if needles or tagged or since is not None or until is not None:
            lo = -math.inf if since is None else since
            hi = math.inf if until is None else until
            return self._select_packed(
                events, after, needles, (lo, hi), visitor_id, event_id, tagged
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
        tagged: bytes | None = None,
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
            if tagged is not None:
                found = chunk.containing(tagged, lower, odd=False)
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
            and (tagged is None or tagged in entry.line)
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
