from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import orjson
import pytest

from metrics_service.store.chunk import Entry
from metrics_service.store.line import Group
from metrics_service.store.ring import Ring
from metrics_service.store.sink import Sink, SinkError
from metrics_service.store.writer import Outcome, Writer


def group(*events: tuple[str, str, str | None], ts: float = 1.5) -> Group:
    bodies = []
    for name, visitor_id, event_id in events:
        fields = {"event": name, "visitor_id": visitor_id, "event_id": event_id}
        bodies.append(orjson.dumps(fields)[1:])
    return Group(
        b"2026-01-01T00:00:00.000Z",
        [ts] * len(events),
        [name for name, _, _ in events],
        [visitor_id for _, visitor_id, _ in events],
        [event_id for _, _, event_id in events],
        [b'"timestamp":"2026-01-01T00:00:01.500Z",'] * len(events),
        bodies,
    )


def store(
    tmp_path: Path,
    groups: list[Group],
    *,
    capacity: int = 100,
    listen: bool = True,
    instance: str | None = None,
) -> tuple[list[Outcome], Ring, list[bytes], list[list[Entry]]]:
    """Submit `groups` in one loop step (one flush); outcomes, ring, file lines, and
    what a listener saw."""
    ring = Ring(capacity)
    sink = Sink(tmp_path / "events.jsonl")
    heard: list[list[Entry]] = []

    async def run() -> list[Outcome]:
        writer = Writer(ring, sink, fsync="never", dedupe_window=100, instance=instance)
        if listen:
            writer.subscribe(heard.append)
        futures = [writer.enqueue(g) for g in groups]
        outcomes = [await future for future in futures]
        await writer.close()
        return outcomes

    outcomes = asyncio.run(run())
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    return outcomes, ring, lines, heard


def test_groups_submitted_before_the_write_share_it(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "events.jsonl")
    writes: list[bytes] = []
    write = sink.write
    sink.write = lambda data: (writes.append(data), write(data))[1]  # type: ignore[method-assign]

    async def run() -> list[Outcome]:
        writer = Writer(Ring(10), sink, fsync="never")
        futures = [
            writer.enqueue(group((name, "visitor-1", None))) for name in ("a", "b", "c")
        ]
        outcomes = [await future for future in futures]
        outcomes.append(await writer.enqueue(group(("d", "visitor-1", None))))
        await writer.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert [o.first_seq for o in outcomes] == [1, 2, 3, 4]
    assert len(writes) == 2
    assert writes[0].count(b"\n") == 3
    assert (tmp_path / "events.jsonl").read_bytes().count(b"\n") == 4


def test_a_lone_group_is_written_with_nothing_else_going_on(tmp_path: Path) -> None:
    async def run() -> Outcome:
        writer = Writer(Ring(10), Sink(tmp_path / "e.jsonl"), fsync="never")
        outcome = await asyncio.wait_for(
            writer.enqueue(group(("a", "visitor-1", None))), 5
        )
        await writer.close()
        return outcome

    assert asyncio.run(run()).first_seq == 1


def test_groups_of_one_flush_get_consecutive_seqs_in_order(tmp_path: Path) -> None:
    groups = [
        group(("a", "visitor-1", "id-1")),
        group(("b", "visitor-2", None), ("c", "visitor-3", "id-3")),
        group(("d", "visitor-4", "id-4"), ("e", "visitor-5", None), ts=2.5),
    ]
    outcomes, ring, lines, heard = store(tmp_path, groups)
    assert outcomes == [
        Outcome(1, 0, 1, 1),
        Outcome(2, 0, 2, 3),
        Outcome(2, 0, 4, 5),
    ]
    stored = [orjson.loads(line) for line in lines]
    assert [s["seq"] for s in stored] == [1, 2, 3, 4, 5]
    assert [s["event"] for s in stored] == ["a", "b", "c", "d", "e"]
    expected = [
        (1, 1.5, "a", "visitor-1", "id-1"),
        (2, 1.5, "b", "visitor-2", None),
        (3, 1.5, "c", "visitor-3", "id-3"),
        (4, 2.5, "d", "visitor-4", "id-4"),
        (5, 2.5, "e", "visitor-5", None),
    ]
    assert [tuple(e[:5]) for e in ring] == expected
    assert [e.line for e in ring] == lines
    assert [[tuple(e[:5]) for e in entries] for entries in heard] == [expected]


def test_duplicates_within_and_across_groups_are_left_out(tmp_path: Path) -> None:
    groups = [
        group(("a", "visitor-1", "id-1")),
        group(("b", "visitor-2", "id-1"), ("c", "visitor-3", "id-2")),
        group(("d", "visitor-4", "id-2"), ("e", "visitor-5", "id-2")),
        group(("f", "visitor-6", "id-3"), ("g", "visitor-7", "id-3")),
    ]
    outcomes, ring, lines, _ = store(tmp_path, groups)
    assert outcomes == [
        Outcome(1, 0, 1, 1),
        Outcome(1, 1, 2, 2),
        Outcome(0, 2, None, None),
        Outcome(1, 1, 3, 3),
    ]
    assert [orjson.loads(line)["event"] for line in lines] == ["a", "c", "f"]
    assert [(e.seq, e.event, e.event_id) for e in ring] == [
        (1, "a", "id-1"),
        (2, "c", "id-2"),
        (3, "f", "id-3"),
    ]


def test_a_flush_larger_than_the_ring_keeps_the_newest(tmp_path: Path) -> None:
    groups = [
        group(*[(f"e{i}", f"visitor-{i}", f"id-{i}") for i in range(k, k + 3)])
        for k in range(0, 12, 3)
    ]
    # Without listeners, entries are built only for what the ring keeps.
    outcomes, ring, lines, _ = store(tmp_path, groups, capacity=5, listen=False)
    assert [o.stored for o in outcomes] == [3, 3, 3, 3]
    assert len(lines) == 12
    assert [(e.seq, e.event, e.visitor_id) for e in ring] == [
        (seq, f"e{seq - 1}", f"visitor-{seq - 1}") for seq in range(8, 13)
    ]
    assert ring.evicted == 7


def test_one_group_of_several_events(tmp_path: Path) -> None:
    groups = [group(("a", "visitor-1", None), ("b", "visitor-2", "id-2"), ts=3.0)]
    outcomes, ring, lines, _ = store(tmp_path, groups)
    assert outcomes == [Outcome(2, 0, 1, 2)]
    assert [tuple(e[:5]) for e in ring] == [
        (1, 3.0, "a", "visitor-1", None),
        (2, 3.0, "b", "visitor-2", "id-2"),
    ]
    assert [e.line for e in ring] == lines


def test_the_one_event_stored_follows_a_group_of_duplicates(tmp_path: Path) -> None:
    ring = Ring(10)
    sink = Sink(tmp_path / "events.jsonl")

    async def run() -> list[Outcome]:
        writer = Writer(ring, sink, fsync="never", dedupe_window=100)
        await writer.enqueue(group(("a", "visitor-1", "id-1")))
        # The next flush: a group whose only event is a duplicate, then a new one.
        futures = [
            writer.enqueue(group(("b", "visitor-2", "id-1"))),
            writer.enqueue(group(("c", "visitor-3", "id-3"))),
        ]
        outcomes = [await future for future in futures]
        await writer.close()
        return outcomes

    assert asyncio.run(run()) == [Outcome(0, 1, None, None), Outcome(1, 0, 2, 2)]
    assert [(e.seq, e.event, e.visitor_id, e.event_id) for e in ring] == [
        (1, "a", "visitor-1", "id-1"),
        (2, "c", "visitor-3", "id-3"),
    ]


def test_a_failed_fsync_stores_nothing_and_burns_no_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = Ring(100)
    sink = Sink(tmp_path / "events.jsonl")
    heard: list[list[Entry]] = []
    fail = [True]

    def fsync() -> None:
        if fail[0]:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sink, "fsync", fsync)

    async def run() -> tuple[BaseException | None, Outcome, int]:
        writer = Writer(ring, sink, fsync="always", dedupe_window=100)
        writer.subscribe(heard.append)
        try:
            await writer.enqueue(
                group(("a", "visitor-1", None), ("b", "visitor-1", "id-1"))
            )
        except SinkError as exc:
            failed: BaseException | None = exc
        else:
            failed = None
        last_seq_after_failure = writer.last_seq
        fail[0] = False
        outcome = await writer.enqueue(group(("a", "visitor-1", "id-1")))
        await writer.close()
        return failed, outcome, last_seq_after_failure

    failed, outcome, last_seq = asyncio.run(run())
    assert isinstance(failed, SinkError)
    assert last_seq == 0
    # The retry is stored once, with the seq the failed write did not use up, and
    # its event_id was not remembered by the failed write.
    assert outcome == Outcome(1, 0, 1, 1)
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line)["seq"] for line in lines] == [1]
    assert [entry.seq for entry in ring.newest(10)] == [1]
    assert [[entry.seq for entry in entries] for entries in heard] == [[1]]
    assert "fsync failed" in str(failed) and "[Errno" not in str(failed)


def test_without_an_instance_lines_are_as_before(tmp_path: Path) -> None:
    lines = store(tmp_path, [group(("a", "visitor-1", "e-1"))])[2]
    assert lines == [
        b'{"seq":1,"received_at":"2026-01-01T00:00:00.000Z",'
        b'"timestamp":"2026-01-01T00:00:01.500Z",'
        b'"event":"a","visitor_id":"visitor-1","event_id":"e-1"}'
    ]


@pytest.mark.parametrize("name", ["web-1", "A", "eu.west_2-" + "x" * 53])
def test_an_instance_follows_received_at_in_every_line(
    tmp_path: Path, name: str
) -> None:
    groups = [
        group(("a", "visitor-1", None)),
        group(("b", "visitor-2", "e"), ("c", "v-3", None)),
    ]
    _, ring, lines, heard = store(tmp_path, groups, instance=name)
    assert len(lines) == 3
    for seq, line in enumerate(lines, 1):
        assert line.startswith(
            b'{"seq":%d,"received_at":"2026-01-01T00:00:00.000Z","instance":"%s",'
            b'"timestamp":"' % (seq, name.encode())
        )
        assert list(orjson.loads(line))[:4] == [
            "seq",
            "received_at",
            "instance",
            "timestamp",
        ]
    assert [e.line for e in ring] == lines
    assert [e.line for batch in heard for e in batch] == lines


@pytest.mark.parametrize("name", ["", "-web", 'a"b', "a\\b", "x" * 65, "é"])
def test_a_name_json_would_escape_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a collector name"):
        Writer(Ring(10), Sink(tmp_path / "events.jsonl"), instance=name)
