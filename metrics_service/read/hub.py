from __future__ import annotations

import asyncio
import signal
import threading
from collections import deque
from collections.abc import Callable
from types import FrameType

from metrics_service.store.chunk import Entry, Predicate
from metrics_service.store.writer import Writer

QUEUE_LIMIT = 1000


class Waiter:
    """One `wait` request: done once `count` matching entries have been seen."""

    __slots__ = ("count", "events", "future", "predicate")

    def __init__(self, predicate: Predicate, count: int, events: list[Entry]) -> None:
        self.predicate = predicate
        self.count = count
        self.events = events
        self.future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()


class Subscriber:
    """One stream client: matching entries queue here until its response sends them."""

    __slots__ = ("closed", "limit", "overflowed", "predicate", "queue", "wakeup")

    def __init__(self, predicate: Predicate, limit: int) -> None:
        self.predicate = predicate
        self.limit = limit
        self.queue: deque[Entry] = deque()
        self.overflowed = False
        self.closed = False
        self.wakeup = asyncio.Event()

    def take(self) -> list[Entry]:
        items = list(self.queue)
        self.queue.clear()
        self.wakeup.clear()
        return items


class Hub:
    """Hands new entries to waiters and stream subscribers, from the writer's flush.

    The listener only appends and sets futures/events, so a slow client costs
    ingestion nothing: it overflows its own bounded queue instead.
    """

    def __init__(self, writer: Writer) -> None:
        self._waiters: set[Waiter] = set()
        self._subscribers: set[Subscriber] = set()
        self.closed = False
        self._hooked = False
        self._writer = writer
        self._unsubscribe: Callable[[], None] | None = None

    def _listen(self) -> None:
        # Subscribed on first use, so a writer nobody reads from builds no more
        # ring entries than the ring keeps.
        if self._unsubscribe is None and not self.closed:
            self._unsubscribe = self._writer.subscribe(self._on_entries)

    def _on_entries(self, entries: list[Entry]) -> None:
        if self._waiters:
            for waiter in list(self._waiters):
                predicate, events = waiter.predicate, waiter.events
                events.extend(entry for entry in entries if predicate(entry))
                if len(events) >= waiter.count:
                    self._waiters.discard(waiter)
                    if not waiter.future.done():
                        waiter.future.set_result(True)
        if self._subscribers:
            for sub in list(self._subscribers):
                predicate, queue = sub.predicate, sub.queue
                added = False
                for entry in entries:
                    if predicate(entry):
                        if len(queue) >= sub.limit:
                            sub.overflowed = True
                            self._subscribers.discard(sub)
                            break
                        queue.append(entry)
                        added = True
                if added or sub.overflowed:
                    sub.wakeup.set()

    async def wait(
        self, predicate: Predicate, count: int, existing: list[Entry], timeout: float
    ) -> tuple[bool, list[Entry]]:
        """(satisfied, events): `existing` already matched; new entries are added as they come."""
        if len(existing) >= count:
            return True, existing
        if self.closed:
            raise ShuttingDown
        self._hook_exit_signals()
        self._listen()
        waiter = Waiter(predicate, count, existing)
        self._waiters.add(waiter)
        try:
            done = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            done = False
        finally:
            self._waiters.discard(waiter)
        if not done and self.closed:
            raise ShuttingDown
        return done, waiter.events

    def subscribe(self, predicate: Predicate, limit: int = QUEUE_LIMIT) -> Subscriber:
        self._hook_exit_signals()
        self._listen()
        sub = Subscriber(predicate, limit)
        if self.closed:
            sub.closed = True
        else:
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    @property
    def counts(self) -> tuple[int, int]:
        """(waiters, stream subscribers) now registered."""
        return len(self._waiters), len(self._subscribers)

    def close(self) -> None:
        """End every stream and release every waiter; the server is stopping."""
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_result(False)
        self._waiters.clear()
        for sub in self._subscribers:
            sub.closed = True
            sub.wakeup.set()
        self._subscribers.clear()

    def _hook_exit_signals(self) -> None:
        """Close streams and release waiters as soon as SIGTERM/SIGINT arrive.

        The server waits for open responses before it runs the app's shutdown, and a
        stream never finishes by itself, so the lifespan would come too late.
        """
        if self._hooked or threading.current_thread() is not threading.main_thread():
            return
        self._hooked = True
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if callable(previous):
                signal.signal(sig, _chain(previous, loop, self.close))


def _chain(
    previous: Callable[[int, FrameType | None], object],
    loop: asyncio.AbstractEventLoop,
    close: Callable[[], None],
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(close)
        previous(signum, frame)

    return handler


class ShuttingDown(Exception):
    pass
