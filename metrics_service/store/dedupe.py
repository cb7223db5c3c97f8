"""The de-duplication window: the newest event_ids stored, so a retry stores nothing."""

from __future__ import annotations

from collections import deque


class Dedupe:
    """The newest `window` event_ids (0: none kept, nothing is a duplicate)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.ids: set[str] = set()
        # The remembered ids, oldest first, one list per call, so the window slides
        # with a few set operations in C rather than one Python step per id.
        self.order: deque[list[str]] = deque()
        self.count = 0

    def remember(self, event_ids: list[str]) -> None:
        """Mark ids as accepted (also used by replay), forgetting the oldest past the window."""
        if self.window <= 0:
            return
        seen = self.ids
        fresh = [
            event_id for event_id in dict.fromkeys(event_ids) if event_id not in seen
        ]
        seen.update(fresh)
        self.slide(fresh)

    def slide(self, fresh: list[str]) -> None:
        """Queue ids already added to the seen set, forgetting the oldest past the window."""
        if not fresh:
            return
        seen, order = self.ids, self.order
        order.append(fresh)
        self.count += len(fresh)
        excess = self.count - self.window
        while excess > 0:
            oldest = order[0]
            if len(oldest) <= excess:
                order.popleft()
                gone = oldest
            else:
                gone, order[0] = oldest[:excess], oldest[excess:]
            seen.difference_update(gone)
            self.count -= len(gone)
            excess -= len(gone)

    def take(self, event_ids: list[str | None], taken: list[str]) -> list[bool] | None:
        """Which events to keep, or None for all: an event_id seen before, or earlier in
        this flush, makes its event a duplicate. The others' ids join the seen set at
        once and are listed in `taken` (taken back if the write fails)."""
        seen = self.ids
        if len(event_ids) == 1:  # a single event: no lists, sets or dicts to build
            event_id = event_ids[0]
            if event_id is None:
                return None
            if event_id in seen:
                return [False]
            seen.add(event_id)
            taken.append(event_id)
            return None
        ids = [event_id for event_id in event_ids if event_id is not None]
        if seen.isdisjoint(ids):
            before = len(seen)
            seen.update(ids)
            if len(seen) - before == len(ids):  # no repeats within the group either
                taken += ids
                return None
            seen.difference_update(ids)
        keep: list[bool] = []
        for event_id in event_ids:
            unseen = event_id is None or event_id not in seen
            if unseen and event_id is not None:
                seen.add(event_id)
                taken.append(event_id)
            keep.append(unseen)
        return keep

    def give_back(self, taken: list[str]) -> None:
        """Forget ids take() added whose events were not stored after all."""
        self.ids.difference_update(taken)
