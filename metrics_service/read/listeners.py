"""A hub's listeners: parked waiters and stream subscribers (read/hub.py)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from metrics_service.store.chunk import Entry, Predicate
from metrics_service.store.quarantine import Rejection

T = TypeVar("T", Entry, Rejection)
RejectionPredicate = Callable[[Rejection], bool]


class Waiter(Generic[T]):
    """One `wait` request: done once `count` matching entries (or rejections) have
    been seen.

    It keeps at most `keep` (the ring's capacity) of them, the newest: a waiter
    never holds more than the ring could.
    """

    __slots__ = ("count", "events", "future", "keep", "seen")

    def __init__(self, count: int, events: list[T], keep: int) -> None:
        self.count = count
        self.keep = keep
        self.seen = len(events)
        self.events: list[T] = events[-keep:] if len(events) > keep else events
        self.future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def add(self, matches: list[T]) -> bool:
        """Take new matches; True once `count` have been seen."""
        self.seen += len(matches)
        events = self.events
        events += matches
        if len(events) > self.keep:
            del events[: len(events) - self.keep]
        return self.seen >= self.count


class Subscriber:
    """One stream client: matching entries (and rejections, when it asked for them)
    queue here until its response sends them."""

    __slots__ = (
        "closed",
        "key",
        "limit",
        "overflowed",
        "places",
        "predicate",
        "queue",
        "rejections",
        "wakeup",
    )

    def __init__(self, predicate: Predicate, limit: int) -> None:
        self.predicate = predicate
        self.key: Hashable = predicate
        self.limit = limit
        self.queue: deque[Entry] = deque()
        self.rejections: deque[Rejection] = deque()
        # For each queued refusal, how many queued entries came before it.
        self.places: list[int] = []
        self.overflowed = False
        self.closed = False
        self.wakeup = asyncio.Event()

    def take(self) -> list[Entry]:
        items = list(self.queue)
        self.queue.clear()
        self.wakeup.clear()
        return items

    def add_rejection(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)
        self.places.append(len(self.queue))

    def take_rejections(self) -> tuple[list[Rejection], list[int]]:
        """The queued refusals, each with how many of the entries queued with it (to
        be taken next) came before it."""
        items, places = list(self.rejections), self.places
        self.rejections.clear()
        self.places = []
        return items, places


class Full(Exception):
    """As many waiters and subscribers as allowed are registered."""


class ShuttingDown(Exception):
    pass
