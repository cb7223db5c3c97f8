"""The hub: waiters and stream subscribers, what a write costs them, and their cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from metrics_service.read import hub as hub_module
from metrics_service.read.filters import Filters
from metrics_service.read.hub import Full, Hub, ShuttingDown
from metrics_service.read.rejected import RejectionFilters
from metrics_service.store import quarantine as quarantine_module
from metrics_service.store.chunk import Entry
from metrics_service.store.quarantine import Quarantine, Request


class FakeWriter:
    def __init__(self, last_seq: int = 0) -> None:
        self.listeners: list[Any] = []
        self.last_seq = last_seq

    def subscribe(self, listener: Any) -> Any:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def write(self, entries: list[Entry]) -> None:
        for listener in self.listeners:
            listener(entries)


def batch(first: int, n: int) -> list[Entry]:
    return [
        Entry(seq, 0.0, "x", "visitor-1", None, b'{"metadata":{"k":"v"}}')
        for seq in range(first, first + n)
    ]


def costs_of_one_write(
    monkeypatch: pytest.MonkeyPatch, waiters: int, filters: list[Filters]
) -> tuple[int, int]:
    """(metadata decodes, Filters evaluations) of one 100-event write with `waiters`
    parked waiters, the i-th asking filters[i % len(filters)]."""
    decodes = evaluations = 0
    decode = hub_module.decode_metadata
    call = Filters.__call__

    def counted_decode(line: bytes) -> Any:
        nonlocal decodes
        decodes += 1
        return decode(line)

    def counted_call(self: Filters, entry: Entry) -> bool:
        nonlocal evaluations
        evaluations += 1
        return call(self, entry)

    async def run() -> None:
        writer = FakeWriter(last_seq=50)
        hub = Hub(writer, limit=10_000)  # type: ignore[arg-type]
        tasks = [
            asyncio.ensure_future(hub.wait(filters[i % len(filters)], 1, [], 30))
            for i in range(waiters)
        ]
        await asyncio.sleep(0)
        assert hub.counts == (waiters, 0)
        hub.subscribe(filters[0])  # keeps the hub listening with no waiter
        with monkeypatch.context() as patch:
            patch.setattr(hub_module, "decode_metadata", counted_decode)
            patch.setattr(Filters, "__call__", counted_call)
            writer.write(batch(51, 100))
        assert hub.counts == (waiters, 1)  # nothing matched
        hub.close()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    return decodes, evaluations


def test_a_write_decodes_each_event_once_however_many_waiters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nomatch = Filters(meta=((("k",), "nomatch"),))
    alone = costs_of_one_write(monkeypatch, 0, [nomatch])
    assert alone == (100, 100)
    assert costs_of_one_write(monkeypatch, 1000, [nomatch]) == alone
    # Marks already behind the last seq ask the same question as no mark.
    marks = [Filters(after=mark, meta=nomatch.meta) for mark in range(0, 50)]
    assert costs_of_one_write(monkeypatch, 1000, marks) == alone
    # Different questions each evaluate, but still decode an event at most once.
    visitors = [
        Filters(visitor_id=f"visitor-{i % 2}", meta=nomatch.meta) for i in range(2)
    ]
    decodes, evaluations = costs_of_one_write(monkeypatch, 1000, visitors)
    assert decodes == 100
    assert evaluations == 200


def test_a_waiter_keeps_only_the_newest_the_ring_could_hold() -> None:
    async def run() -> tuple[bool, list[Entry]]:
        writer = FakeWriter()
        hub = Hub(writer, keep=100)  # type: ignore[arg-type]
        pending = asyncio.ensure_future(hub.wait(Filters(), 100, batch(1, 10), 30))
        await asyncio.sleep(0)
        writer.write(batch(11, 1000))
        return await pending

    done, events = asyncio.run(run())
    assert done
    assert [e.seq for e in events] == list(range(911, 1011))


def test_waiters_and_subscribers_beyond_the_limit_are_refused() -> None:
    async def run() -> None:
        hub = Hub(FakeWriter(), limit=2)  # type: ignore[arg-type]
        first = asyncio.ensure_future(hub.wait(Filters(), 1, [], 30))
        await asyncio.sleep(0)
        sub = hub.subscribe(Filters())
        assert hub.full
        with pytest.raises(Full, match="METRICS_MAX_WAITERS"):
            await hub.wait(Filters(), 1, [], 30)
        with pytest.raises(Full):
            hub.subscribe(Filters())
        hub.unsubscribe(sub)
        assert not hub.full
        hub.close()
        await asyncio.gather(first, return_exceptions=True)

    asyncio.run(run())


def test_a_waiter_leaves_as_soon_as_its_client_has_gone() -> None:
    async def run() -> tuple[bool, float]:
        hub = Hub(FakeWriter())  # type: ignore[arg-type]
        gone = asyncio.Event()

        async def disconnected() -> None:
            await gone.wait()

        loop = asyncio.get_running_loop()
        started = loop.time()
        pending = asyncio.ensure_future(hub.wait(Filters(), 1, [], 30, disconnected))
        await asyncio.sleep(0.01)
        assert hub.counts == (1, 0)
        gone.set()
        done, _ = await asyncio.wait_for(pending, 5)
        assert hub.counts == (0, 0)
        return done, loop.time() - started

    done, took = asyncio.run(run())
    assert not done
    assert took < 5


# --- the quarantine's records ---------------------------------------------------------


def refusal(quarantine: Quarantine, event: str) -> None:
    body = b'{"visitor_id":"visitor-1","event":"%s"}' % event.encode()
    quarantine.record(Request("/api/metrics/event", 422, "bad", [], body, None))


def test_rejection_waiters_count_against_the_cap_and_are_woken() -> None:
    async def run() -> tuple[bool, list[str | None], int, tuple[int, int]]:
        quarantine = Quarantine(10, None)
        hub = Hub(FakeWriter(), limit=2, quarantine=quarantine)  # type: ignore[arg-type]
        wanted = RejectionFilters(events=frozenset({"b"}))
        waiting = asyncio.ensure_future(hub.wait_rejections(wanted, 1, [], 5))
        await asyncio.sleep(0)
        held = hub.counts
        other = asyncio.ensure_future(hub.wait(Filters(), 1, [], 5))
        await asyncio.sleep(0)
        with pytest.raises(Full):
            await hub.wait_rejections(wanted, 1, [], 5)
        refusal(quarantine, "a")
        refusal(quarantine, "b")
        done, records, seen = await waiting
        hub.close()
        with pytest.raises(ShuttingDown):
            await other
        return done, [r.event for r in records], seen, held

    done, events, seen, held = asyncio.run(run())
    assert done and events == ["b"] and seen == 1
    assert held == (1, 0)


def test_close_releases_rejection_waiters_and_unhooks_the_quarantine() -> None:
    async def run() -> tuple[Quarantine, Hub]:
        quarantine = Quarantine(10, None)
        hub = Hub(FakeWriter(), quarantine=quarantine)  # type: ignore[arg-type]
        waiting = asyncio.ensure_future(
            hub.wait_rejections(RejectionFilters(), 1, [], 5)
        )
        await asyncio.sleep(0)
        assert quarantine.listeners
        hub.close()
        with pytest.raises(ShuttingDown):
            await waiting
        return quarantine, hub

    quarantine, hub = asyncio.run(run())
    assert quarantine.listeners == [] and hub.counts == (0, 0)


def test_a_subscriber_that_falls_behind_on_rejections_overflows() -> None:
    async def run() -> tuple[int, bool, tuple[int, int]]:
        quarantine = Quarantine(100, None)
        hub = Hub(FakeWriter(), quarantine=quarantine)  # type: ignore[arg-type]
        sub = hub.subscribe(Filters(), 3, rejections=RejectionFilters())
        for _ in range(5):
            refusal(quarantine, "a")
        return len(sub.take_rejections()[0]), sub.overflowed, hub.counts

    kept, overflowed, counts = asyncio.run(run())
    assert (kept, overflowed, counts) == (3, True, (0, 0))


def deferred(quarantine: Quarantine, event: str) -> None:
    """A refusal as the front door leaves it: for the next batch."""
    body = b'{"visitor_id":"visitor-1","event":"%s"}' % event.encode()
    quarantine.defer(Request("/api/metrics/event", 422, "bad", [], body, None))


def slow_batches(monkeypatch: pytest.MonkeyPatch, quarantine: Quarantine) -> None:
    """The next batch is recorded a second from now: what a refusal in the last 10 ms
    of a wait, or just before a subscription, meets."""
    monkeypatch.setattr(quarantine_module, "FLUSH_EVERY", 1.0)
    quarantine.flushed = asyncio.get_running_loop().time()


@pytest.mark.parametrize("count", [1, 2])
def test_a_refusal_deferred_before_the_wait_ends_is_seen_by_it(
    monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    async def run() -> tuple[bool, list[str | None], int]:
        quarantine = Quarantine(10, None)
        hub = Hub(FakeWriter(), quarantine=quarantine)  # type: ignore[arg-type]
        slow_batches(monkeypatch, quarantine)
        waiting = asyncio.ensure_future(
            hub.wait_rejections(RejectionFilters(), count, [], 0.05)
        )
        await asyncio.sleep(0.01)
        for _ in range(count):
            deferred(quarantine, "late")  # answered before the wait ends
        done, records, seen = await waiting
        return done, [r.event for r in records], seen

    done, events, seen = asyncio.run(run())
    assert done
    assert events == ["late"] * count and seen == count


def test_a_new_subscriber_gets_no_refusal_made_before_it_subscribed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run() -> tuple[list[str | None], list[str | None]]:
        quarantine = Quarantine(10, None)
        hub = Hub(FakeWriter(), quarantine=quarantine)  # type: ignore[arg-type]
        slow_batches(monkeypatch, quarantine)
        first = hub.subscribe(Filters(), rejections=RejectionFilters())
        deferred(quarantine, "before")
        second = hub.subscribe(Filters(), rejections=RejectionFilters())
        deferred(quarantine, "after")
        quarantine.settle()
        return (
            [r.event for r in first.take_rejections()[0]],
            [r.event for r in second.take_rejections()[0]],
        )

    first, second = asyncio.run(run())
    assert first == ["before", "after"]
    assert second == ["after"]
