from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import orjson


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


class Ring:
    """The newest `capacity` entries in seq order, with per-event counts kept on the way in and out."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.evicted = 0
        self._entries: deque[Entry] = deque()
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __reversed__(self) -> Iterator[Entry]:
        return reversed(self._entries)

    def extend(self, entries: Iterable[Entry]) -> None:
        items = self._entries
        counts = self._counts
        capacity = self.capacity
        for entry in entries:
            if len(items) >= capacity:
                self._drop(items.popleft())
                self.evicted += 1
            items.append(entry)
            name = entry.event
            counts[name] = counts.get(name, 0) + 1

    def _drop(self, old: Entry) -> None:
        left = self._counts[old.event] - 1
        if left:
            self._counts[old.event] = left
        else:
            del self._counts[old.event]

    def clear(self) -> int:
        cleared = len(self._entries)
        self._entries.clear()
        self._counts.clear()
        return cleared

    def counts(self) -> dict[str, int]:
        """Events per name now in the ring; the dict is live, copy before mutating."""
        return self._counts

    def newest(self, limit: int, predicate: Predicate | None = None) -> list[Entry]:
        """Up to `limit` entries, newest first."""
        out: list[Entry] = []
        if limit <= 0:
            return out
        for entry in reversed(self._entries):
            if predicate is None or predicate(entry):
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def after(self, seq: int) -> list[Entry]:
        """Entries with a seq greater than `seq`, oldest first."""
        items = self._entries
        if not items or items[-1].seq <= seq:
            return []
        if items[0].seq > seq:
            return list(items)
        # Seqs are strictly increasing, so only the tail needs walking.
        start = bisect.bisect_right(_SeqView(items), seq)
        return [items[i] for i in range(start, len(items))]


class _SeqView:
    """Lets bisect search the deque by seq without copying it."""

    def __init__(self, items: deque[Entry]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> int:
        return self._items[index].seq
