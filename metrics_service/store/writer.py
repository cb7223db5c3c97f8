from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from metrics_service import _native
from metrics_service.settings import FsyncPolicy
from metrics_service.store.chunk import Entry
from metrics_service.store.dedupe import Dedupe
from metrics_service.store.line import Group, received_slot
from metrics_service.store.ring import Ring
from metrics_service.store.sink import Sink, SinkError

_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__


class Outcome(NamedTuple):
    stored: int
    duplicates: int
    first_seq: int | None
    last_seq: int | None


logger = logging.getLogger("metrics_service")

# Under load, a write that waits two more turns of the loop carries the lines of the
# requests read from the sockets meanwhile (README, Performance: group commit); when
# idle a turn is all but free.
WAIT_TURNS = 2

Listener = Callable[[list[Entry]], None]

# The largest seq stored: the ring keeps seqs as 64-bit integers.
MAX_SEQ = 2**63 - 1


class Writer:
    """Gives accepted records their seqs and writes them: file first, then ring, then listeners.

    Groups submitted while the loop is busy share one write() (group commit); a
    request's await returns only once the write holding its lines has returned.
    The write waits WAIT_TURNS passes of the loop's ready queue, so requests read
    from the sockets meanwhile join it.
    """

    def __init__(
        self,
        ring: Ring,
        sink: Sink,
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        dedupe_window: int = 0,
        instance: str | None = None,
    ) -> None:
        """`instance`: the collector's name (METRICS_INSTANCE), written in each line."""
        self.ring = ring
        self.instance = instance
        # Appended to each group's received_at in LINE's slot (store/line.py).
        self._instance = received_slot(b"", instance)
        self.sink = sink
        self.fsync_policy = fsync
        self.fsync_interval = fsync_interval
        self.last_seq = 0
        self.error: str | None = None
        # Set when no event can be stored until a restart (a corrupt seq in the sink):
        # every write is answered 503 with it and health says it.
        self.blocked: str | None = None
        self.accepted = 0
        self.write_errors = 0
        self.duplicates = 0
        self.fsync_seconds = 0.0
        self._listeners: list[Listener] = []
        # Submitted groups and their requests' futures, side by side (no pair to
        # allocate and to keep alive per request).
        self._groups: list[Group] = []
        self._futures: list[asyncio.Future[Outcome]] = []
        self._scheduled = False
        self._busy = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._fsync_timer: asyncio.TimerHandle | None = None
        self._fsync_task: asyncio.Future[None] | None = None
        self._interval_task: asyncio.Future[None] | None = None
        self.dedupe = Dedupe(dedupe_window)
        self.loop: asyncio.AbstractEventLoop | None = None  # set by Service.start()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every group of entries added to the ring."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def enqueue(self, group: Group) -> asyncio.Future[Outcome]:
        """Store the group's events in order, all or nothing, as a future to await: it
        raises SinkError when the write fails. Events whose event_id was seen are
        counted as duplicates instead."""
        # get_running_loop() costs a getpid() system call on Python 3.11.
        loop = self.loop or asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._groups.append(group)
        self._futures.append(future)
        if not self._scheduled and not self._busy:
            # Otherwise the request that scheduled the flush, or the one being
            # fsynced, has cleared it already: only a finished flush sets it.
            self._idle.clear()
            self._scheduled = True
            loop.call_soon(self._flush_later, loop, WAIT_TURNS)
        return future

    def _flush_later(self, loop: asyncio.AbstractEventLoop, turns: int) -> None:
        if turns:
            loop.call_soon(self._flush_later, loop, turns - 1)
        else:
            self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        groups, futures = self._groups, self._futures
        if not futures:
            self._idle.set()
            return
        self._groups, self._futures = [], []
        taken: list[str] = []  # event_ids this flush stores, in order
        try:
            self._store(groups, futures, taken)
        except Exception as exc:
            self._failed(futures, taken, exc)
            self._after_flush()

    def _failed(
        self,
        futures: list[asyncio.Future[Outcome]],
        taken: list[str],
        exc: Exception,
    ) -> None:
        """A bug, not a disk error: answer the requests (500) rather than hang them."""
        logger.exception("storing events failed")
        self.dedupe.give_back(taken)
        for future in futures:
            if not future.done():
                future.set_exception(exc)

    def _store(
        self,
        submitted: list[Group],
        futures: list[asyncio.Future[Outcome]],
        taken: list[str],
    ) -> None:
        seq = self.last_seq
        lines: list[bytes] = []
        groups: list[Group] = []  # what is stored of each
        outcomes: list[Outcome] = []
        dedupe = self.dedupe.window > 0
        instance = self._instance
        for group in submitted:
            duplicates = 0
            if dedupe:
                keep = self.dedupe.take(group.event_ids, taken)
                if keep is not None:
                    duplicates = keep.count(False)
                    group = group.select(keep)
            first = seq + 1
            stored = len(group.bodies)
            seq += stored
            if seq > MAX_SEQ or self.blocked is not None:
                break  # refused below, before a line is made
            if stored:
                received = group.received
                if instance:
                    received += instance
                lines += _native.lines(first, received, group.heads, group.bodies)
            groups.append(group)
            outcomes.append(
                _new(Outcome, (stored, duplicates, first, seq))
                if stored
                else _new(Outcome, (0, duplicates, None, None))
            )
        if self.blocked is not None or seq > MAX_SEQ:
            reason = self.blocked or f"seq {seq} would pass {MAX_SEQ}, the largest kept"
            self._fail(futures, taken, None, reason)
            return
        if lines:
            try:
                before = self.sink.write(b"\n".join(lines) + b"\n")
            except SinkError as exc:
                # Nothing reached the file: seqs are not burned, the ring is untouched,
                # and the ids may come again.
                self._fail(futures, taken, exc.errno, str(exc))
                return
            if self.fsync_policy == "always":
                # Published (ring, listeners, seq) only once the fsync succeeded: a 503
                # then means nothing was stored. No other flush runs meanwhile.
                self._busy = True
                self._fsync_task = asyncio.ensure_future(
                    self._fsync_then_publish(
                        futures, outcomes, groups, lines, seq, list(taken), before
                    )
                )
                del taken[:]
                return
            self._publish(groups, lines, seq, taken)
        self.duplicates += sum(o.duplicates for o in outcomes)
        if lines and self.fsync_policy == "interval":
            self._arm_fsync_timer()
        _answer(futures, outcomes)
        self._after_flush()

    def _fail(
        self,
        futures: list[asyncio.Future[Outcome]],
        taken: list[str],
        errno: int | None,
        message: str,
    ) -> None:
        """Answer every request of the flush with SinkError; nothing was stored."""
        self.dedupe.give_back(taken)
        del taken[:]
        self.write_errors += 1
        self.error = message
        for future in futures:
            if not future.done():
                future.set_exception(SinkError(errno, message))
        self._after_flush()

    def block(self, reason: str) -> None:
        """Refuse every write from now on with `reason` (503); health shows it."""
        self.blocked = self.error = reason

    def _publish(
        self, groups: list[Group], lines: list[bytes], seq: int, taken: list[str]
    ) -> None:
        """The written lines become stored: seqs used, ids remembered, ring, listeners."""
        self.error = None
        first = self.last_seq + 1
        self.last_seq = seq
        self.accepted += len(lines)
        if taken:
            self.dedupe.slide(list(taken))
            del taken[:]  # stored: not to be taken back
        entries = self._entries(groups, first, lines)
        self.ring.extend(entries, written=True, passed=len(lines) - len(entries))
        for listener in list(self._listeners):
            try:
                listener(entries)
            except Exception:
                # The lines are stored; a broken subscriber must not hang the writers.
                logger.exception("a collector listener failed")

    def _entries(
        self, groups: list[Group], first: int, lines: list[bytes]
    ) -> list[Entry]:
        """Ring entries for the stored lines (seqs from `first`); without listeners only
        the newest the ring keeps."""
        if len(lines) == 1:
            group = next(g for g in groups if g.bodies)
            return [
                _new(
                    Entry,
                    (
                        first,
                        group.ts[0],
                        group.events[0],
                        group.visitor_ids[0],
                        group.event_ids[0],
                        lines[0],
                    ),
                )
            ]
        if len(groups) == 1:
            only = groups[0]
            ts, events = only.ts, only.events
            visitor_ids, event_ids = only.visitor_ids, only.event_ids
        else:
            ts, events, visitor_ids, event_ids = [], [], [], []
            for group in groups:
                ts += group.ts
                events += group.events
                visitor_ids += group.visitor_ids
                event_ids += group.event_ids
        skip = 0 if self._listeners else max(len(lines) - self.ring.capacity, 0)
        columns: tuple[list[Any], ...] = (ts, events, visitor_ids, event_ids, lines)
        if skip:
            columns = tuple(column[skip:] for column in columns)
        return _native.rows(Entry, first + skip, columns)

    async def _fsync_then_publish(
        self,
        futures: list[asyncio.Future[Outcome]],
        outcomes: list[Outcome],
        groups: list[Group],
        lines: list[bytes],
        seq: int,
        taken: list[str],
        before: int,
    ) -> None:
        try:
            try:
                await asyncio.to_thread(self._timed_fsync)
            except OSError as exc:
                # Cut the group back out of the file: it was never acknowledged.
                self.sink.cut_back(before)
                message = f"fsync failed on {self.sink.path}: {exc.strerror or exc}"
                self._busy = False
                self._fail(futures, taken, exc.errno, message)
                return
            self._publish(groups, lines, seq, taken)
            self.duplicates += sum(o.duplicates for o in outcomes)
            _answer(futures, outcomes)
        except Exception as exc:
            self._failed(futures, taken, exc)
        finally:
            self._busy = False
            self._after_flush()

    def _after_flush(self) -> None:
        if self._futures:
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        elif not self._busy:
            self._idle.set()

    def _timed_fsync(self) -> None:
        start = time.perf_counter()
        self.sink.fsync()
        self.fsync_seconds += time.perf_counter() - start

    def _arm_fsync_timer(self) -> None:
        if self._fsync_timer is None:
            loop = asyncio.get_running_loop()
            self._fsync_timer = loop.call_later(
                self.fsync_interval, self._interval_fsync
            )

    def _interval_fsync(self) -> None:
        self._fsync_timer = None
        if self._interval_task is not None and not self._interval_task.done():
            self._arm_fsync_timer()  # a slow disk: the previous fsync still runs
            return
        # A thread, so a slow disk stalls neither requests nor the event loop.
        self._interval_task = asyncio.ensure_future(self._background_fsync())

    async def _background_fsync(self) -> None:
        try:
            await asyncio.to_thread(self._timed_fsync)
        except OSError as exc:
            self.error = f"fsync failed on {self.sink.path}: {exc.strerror or exc}"

    async def drain(self) -> None:
        """Wait until every submitted record has been written (or failed)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Finish in-flight writes, then fsync and close the sink."""
        await self.drain()
        if self._fsync_timer is not None:
            self._fsync_timer.cancel()
            self._fsync_timer = None
        if self._interval_task is not None:
            await self._interval_task
        self.sink.close()


def _answer(
    futures: list[asyncio.Future[Outcome]],
    outcomes: list[Outcome],
) -> None:
    for future, outcome in zip(futures, outcomes, strict=True):
        if not future.done():
            future.set_result(outcome)
