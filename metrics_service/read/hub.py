from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import threading
from collections.abc import Awaitable, Callable, Hashable
from types import FrameType
from typing import Any

import orjson

from metrics_service.read.filters import Filters
from metrics_service.read.listeners import Full as Full
from metrics_service.read.listeners import RejectionPredicate as RejectionPredicate
from metrics_service.read.listeners import ShuttingDown as ShuttingDown
from metrics_service.read.listeners import Subscriber, Waiter
from metrics_service.store.chunk import Entry, Predicate
from metrics_service.store.quarantine import Quarantine, Rejection
from metrics_service.store.writer import Writer

QUEUE_LIMIT = 1000
MAX_LISTENERS = 1000  # parked waiters plus stream subscribers (METRICS_MAX_WAITERS)
_UNREAD: Any = object()


class _Matches:
    """The entries of one write that match each predicate, worked out once per distinct
    predicate however many waiters share it; an entry's metadata is decoded at most once
    whichever `meta.` filters (plain or with an operator) ask for it."""

    __slots__ = ("entries", "found", "metadata")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.found: dict[Hashable, list[Entry]] = {}
        self.metadata: list[Any] | None = None

    def __call__(self, key: Hashable, predicate: Predicate) -> list[Entry]:
        found = self.found.get(key)
        if found is None:
            found = self.found[key] = self._select(predicate)
        return found

    def _select(self, predicate: Predicate) -> list[Entry]:
        entries = self.entries
        if not isinstance(predicate, Filters) or not predicate.reads_metadata:
            return [entry for entry in entries if predicate(entry)]
        cheap = predicate.without_metadata()
        wanted = predicate.metadata_matches
        metadata = self.metadata
        if metadata is None:
            metadata = self.metadata = [_UNREAD] * len(entries)
        out = []
        for i, entry in enumerate(entries):
            if not cheap(entry):
                continue
            value = metadata[i]
            if value is _UNREAD:
                value = metadata[i] = decode_metadata(entry.line)
            if wanted(value):
                out.append(entry)
        return out


def decode_metadata(line: bytes) -> Any:
    """A stored line's metadata (read/filters.py's `meta.` filters read the same)."""
    return orjson.loads(line).get("metadata")


class Hub:
    """Hands new entries to waiters and stream subscribers, from the writer's flush.

    The listener only appends and sets futures/events, so a slow client costs
    ingestion nothing: it overflows its own bounded queue instead. Waiters and
    subscribers are kept by predicate, so those asking the same question share one
    evaluation per write, and their number is capped (`limit`).
    """

    def __init__(
        self,
        writer: Writer,
        *,
        limit: int = MAX_LISTENERS,
        keep: int | None = None,
        quarantine: Quarantine | None = None,
    ) -> None:
        self._waiters: dict[Hashable, tuple[Predicate, set[Waiter[Entry]]]] = {}
        # Rejections are few: their waiters and subscribers are checked one by one.
        self._quarantine = quarantine
        self._rejection_waiters: dict[Waiter[Rejection], RejectionPredicate] = {}
        self._rejection_subs: dict[Subscriber, RejectionPredicate] = {}
        self._on_quarantine = False
        self._subscribers: dict[Hashable, tuple[Predicate, set[Subscriber]]] = {}
        self._waiting = 0
        self._streaming = 0
        self.limit = limit
        ring = getattr(writer, "ring", None)
        self.keep = keep if keep is not None else getattr(ring, "capacity", 1 << 62)
        self.closed = False
        self._hooked = False
        self._writer = writer
        self._unsubscribe: Callable[[], None] | None = None

    def _listen(self) -> None:
        # Subscribed on first use, so a writer nobody reads from builds no more
        # ring entries than the ring keeps.
        if self._unsubscribe is None and not self.closed:
            self._unsubscribe = self._writer.subscribe(self._on_entries)

    def _listen_rejections(self) -> None:
        quarantine = self._quarantine
        if quarantine is not None and not self.closed:
            # What was refused before is no news to a new waiter or stream, whether or
            # not the hub already listens: it gets only refusals recorded after this.
            quarantine.settle()
            if not self._on_quarantine:
                quarantine.listeners.append(self._on_rejection)
                self._on_quarantine = True

    def _on_rejection(self, rejection: Rejection) -> None:
        for waiter, predicate in list(self._rejection_waiters.items()):
            if predicate(rejection) and waiter.add([rejection]):
                self._drop_rejection_waiter(waiter)
                if not waiter.future.done():
                    waiter.future.set_result(True)
        for sub, predicate in list(self._rejection_subs.items()):
            if not predicate(rejection):
                continue
            if len(sub.rejections) >= sub.limit:
                sub.overflowed = True
                self.unsubscribe(sub)
            else:
                sub.add_rejection(rejection)
            sub.wakeup.set()

    def _drop_rejection_waiter(self, waiter: Waiter[Rejection]) -> None:
        if self._rejection_waiters.pop(waiter, None) is not None:
            self._waiting -= 1

    @property
    def full(self) -> bool:
        return self._waiting + self._streaming >= self.limit

    def full_message(self) -> str:
        return (
            f"{self.limit} waits and streams are open, the most allowed"
            " (METRICS_MAX_WAITERS); retry shortly"
        )

    def _key(self, predicate: Predicate) -> Hashable:
        """What the predicate is keyed by: a Filters whose `after` is already behind
        the last seq matches every new entry the same without it."""
        if isinstance(predicate, Filters) and predicate.after is not None:
            last = getattr(self._writer, "last_seq", None)
            if isinstance(last, int) and predicate.after <= last:
                return dataclasses.replace(predicate, after=None)
        return predicate

    def _on_entries(self, entries: list[Entry]) -> None:
        if self._rejection_subs and self._quarantine is not None:
            # A stream shows refusals and events in the order they came: the ones
            # refused before these events were stored go first.
            self._quarantine.settle()
        matches = _Matches(entries)
        if self._waiters:
            for key, (predicate, waiters) in list(self._waiters.items()):
                found = matches(key, predicate)
                if not found:
                    continue
                for waiter in list(waiters):
                    if waiter.add(found):
                        self._drop_waiter(key, waiter)
                        if not waiter.future.done():
                            waiter.future.set_result(True)
        if self._subscribers:
            for key, (predicate, subs) in list(self._subscribers.items()):
                found = matches(key, predicate)
                if not found:
                    continue
                for sub in list(subs):
                    queue = sub.queue
                    room = sub.limit - len(queue)
                    if len(found) > room:
                        queue.extend(found[:room])
                        sub.overflowed = True
                        self.unsubscribe(sub)
                    else:
                        queue.extend(found)
                    sub.wakeup.set()

    def _drop_waiter(self, key: Hashable, waiter: Waiter[Entry]) -> None:
        group = self._waiters.get(key)
        if group is not None and waiter in group[1]:
            group[1].discard(waiter)
            self._waiting -= 1
            if not group[1]:
                del self._waiters[key]

    async def wait(
        self,
        predicate: Predicate,
        count: int,
        existing: list[Entry],
        timeout: float,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> tuple[bool, list[Entry]]:
        """(satisfied, events): `existing` already matched; new entries are added as they
        come. The waiter leaves early when `disconnected()` (the client went) completes.
        Raises Full when `limit` waiters and subscribers are registered."""
        done, events, _ = await self.wait_counted(
            predicate, count, existing, timeout, disconnected
        )
        return done, events

    async def wait_counted(
        self,
        predicate: Predicate,
        count: int,
        existing: list[Entry],
        timeout: float,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> tuple[bool, list[Entry], int]:
        """As `wait`, with how many matches were seen in all: a write can bring more
        than `count`, and more than the newest `keep` that the events hold."""
        if len(existing) >= count:
            return True, existing[-self.keep :], len(existing)
        if self.closed:
            raise ShuttingDown
        if self.full:
            raise Full(self.full_message())
        self._hook_exit_signals()
        self._listen()
        waiter: Waiter[Entry] = Waiter(count, existing, self.keep)
        key = self._key(predicate)
        group = self._waiters.get(key)
        if group is None:
            group = self._waiters[key] = (predicate, set())
        group[1].add(waiter)
        self._waiting += 1
        gone: asyncio.Future[object] | None = None
        try:
            if disconnected is None:
                try:
                    done = await asyncio.wait_for(
                        asyncio.shield(waiter.future), timeout
                    )
                except TimeoutError:
                    done = False
            else:
                gone = asyncio.ensure_future(disconnected())
                await asyncio.wait(
                    (waiter.future, gone),
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                done = waiter.future.done() and waiter.future.result()
        finally:
            self._drop_waiter(key, waiter)
            if gone is not None and not gone.done():
                gone.cancel()
        if not done and self.closed:
            raise ShuttingDown
        return done, waiter.events, waiter.seen

    async def wait_rejections(
        self,
        predicate: RejectionPredicate,
        count: int,
        existing: list[Rejection],
        timeout: float,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> tuple[bool, list[Rejection], int]:
        """As `wait_counted`, for the quarantine's records."""
        if len(existing) >= count:
            return True, existing, len(existing)
        if self.closed:
            raise ShuttingDown
        if self.full:
            raise Full(self.full_message())
        self._hook_exit_signals()
        self._listen_rejections()
        quarantine = self._quarantine
        keep = quarantine.capacity if quarantine is not None else self.keep
        waiter: Waiter[Rejection] = Waiter(count, existing, max(keep, 1))
        self._rejection_waiters[waiter] = predicate
        self._waiting += 1
        waits: list[asyncio.Future[Any]] = [waiter.future]
        if disconnected is not None:
            waits.append(asyncio.ensure_future(disconnected()))
        try:
            await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not waiter.future.done() and quarantine is not None:
                # Refusals answered before the timeout may still wait for their batch:
                # recorded now, while the waiter is registered, they count.
                quarantine.settle()
            done = waiter.future.done() and waiter.future.result()
        finally:
            self._drop_rejection_waiter(waiter)
            for each in waits[1:]:
                each.cancel()
        if not done and self.closed:
            raise ShuttingDown
        return done, waiter.events, waiter.seen

    def subscribe(
        self,
        predicate: Predicate,
        limit: int = QUEUE_LIMIT,
        *,
        force: bool = False,
        rejections: RejectionPredicate | None = None,
    ) -> Subscriber:
        """A new subscriber; Full when `limit` waiters and subscribers are registered
        (unless `force`: the stream endpoint checks `full` before it answers). With
        `rejections`, the quarantine's matching records queue on it too."""
        if self.full and not force and not self.closed:
            raise Full(self.full_message())
        self._hook_exit_signals()
        self._listen()
        sub = Subscriber(predicate, limit)
        if self.closed:
            sub.closed = True
        else:
            sub.key = key = self._key(predicate)
            group = self._subscribers.get(key)
            if group is None:
                group = self._subscribers[key] = (predicate, set())
            group[1].add(sub)
            self._streaming += 1
            if rejections is not None:
                self._listen_rejections()
                self._rejection_subs[sub] = rejections
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Hand it nothing more; what it has queued stays for it to send."""
        self._rejection_subs.pop(sub, None)
        group = self._subscribers.get(sub.key)
        if group is not None and sub in group[1]:
            group[1].discard(sub)
            self._streaming -= 1
            if not group[1]:
                del self._subscribers[sub.key]

    @property
    def counts(self) -> tuple[int, int]:
        """(waiters, stream subscribers) now registered."""
        return self._waiting, self._streaming

    def close(self) -> None:
        """End every stream and release every waiter; the server is stopping."""
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._on_quarantine and self._quarantine is not None:
            with contextlib.suppress(ValueError):
                self._quarantine.listeners.remove(self._on_rejection)
            self._on_quarantine = False
        for pending in self._rejection_waiters:
            if not pending.future.done():
                pending.future.set_result(False)
        self._waiting -= len(self._rejection_waiters)
        self._rejection_waiters.clear()
        self._rejection_subs.clear()
        for _, waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_result(False)
        self._waiters.clear()
        self._waiting = 0
        for _, subs in self._subscribers.values():
            for sub in subs:
                sub.closed = True
                sub.wakeup.set()
        self._subscribers.clear()
        self._streaming = 0

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
