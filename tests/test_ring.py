from __future__ import annotations

import orjson
import pytest

from metrics_service.store.chunk import Entry, repacked
from metrics_service.store.ring import Ring


def entry(seq: int, name: str = "page_view") -> Entry:
    line = orjson.dumps({"seq": seq, "event": name})
    return Entry(seq, float(seq), name, "visitor-123", None, line)


def seqs(entries: list[Entry]) -> list[int]:
    return [e.seq for e in entries]


def test_keeps_the_newest_in_seq_order() -> None:
    ring = Ring(3)
    ring.extend(entry(i) for i in range(1, 6))
    assert len(ring) == 3
    assert seqs(list(ring)) == [3, 4, 5]
    assert ring.evicted == 2


def test_counts_follow_eviction() -> None:
    ring = Ring(3)
    ring.extend([entry(1, "a"), entry(2, "a"), entry(3, "b")])
    assert ring.counts() == {"a": 2, "b": 1}
    ring.extend([entry(4, "c")])
    assert ring.counts() == {"a": 1, "b": 1, "c": 1}
    ring.extend([entry(5, "c"), entry(6, "c")])
    # A name whose last entry left the ring is gone, not left at zero.
    assert ring.counts() == {"c": 3}
    assert ring.evicted == 3


def test_counts_always_match_the_contents() -> None:
    ring = Ring(7)
    names = ["a", "b", "c", "a", "a", "d"]
    for seq in range(1, 200):
        ring.extend([entry(seq, names[seq * 7 % len(names)])])
        expected: dict[str, int] = {}
        for e in ring:
            expected[e.event] = expected.get(e.event, 0) + 1
        assert ring.counts() == expected
    assert ring.evicted == 199 - 7


def test_capacity_one() -> None:
    ring = Ring(1)
    ring.extend([entry(1, "a")])
    ring.extend([entry(2, "b"), entry(3, "c")])
    assert seqs(list(ring)) == [3]
    assert ring.counts() == {"c": 1}
    assert ring.evicted == 2
    assert seqs(ring.newest(50)) == [3]
    assert seqs(ring.after(2)) == [3]
    assert ring.after(3) == []


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Ring(0)


def test_newest_is_newest_first_and_bounded() -> None:
    ring = Ring(10)
    ring.extend(entry(i, "a" if i % 2 else "b") for i in range(1, 8))
    assert seqs(ring.newest(3)) == [7, 6, 5]
    assert seqs(ring.newest(100)) == [7, 6, 5, 4, 3, 2, 1]
    assert ring.newest(0) == []
    assert seqs(ring.newest(2, lambda e: e.event == "b")) == [6, 4]


def test_after_returns_the_tail_oldest_first() -> None:
    ring = Ring(5)
    ring.extend(entry(i) for i in range(1, 9))  # holds 4..8
    assert seqs(ring.after(0)) == [4, 5, 6, 7, 8]
    assert seqs(ring.after(3)) == [4, 5, 6, 7, 8]
    assert seqs(ring.after(5)) == [6, 7, 8]
    assert seqs(ring.after(7)) == [8]
    assert ring.after(8) == []
    assert Ring(3).after(0) == []


def test_clear_empties_counts_but_keeps_evicted() -> None:
    ring = Ring(2)
    ring.extend(entry(i) for i in range(1, 4))
    assert ring.clear() == 2
    assert len(ring) == 0
    assert ring.counts() == {}
    assert ring.newest(10) == []
    assert ring.evicted == 1
    ring.extend([entry(4, "x")])
    assert ring.counts() == {"x": 1}


def stored(seq: int, name: str, visitor_id: str, event_id: str | None) -> Entry:
    """An entry whose line is shaped like the collector's (visitor_id, event_id inside)."""
    body: dict[str, object] = {"seq": seq, "event": name, "visitor_id": visitor_id}
    if event_id is not None:
        body["event_id"] = event_id
    body["metadata"] = {"visitor_id": "nested", "event_id": "nested"}
    return Entry(seq, seq + 0.25, name, visitor_id, event_id, orjson.dumps(body))


def test_packed_chunks_give_back_the_same_entries() -> None:
    odd_visitors = ["visitor-123", 'has "quotes" \\ and slashes', "vïsitor-ü-ß"]
    entries = [
        stored(seq, "ab"[seq % 2], odd_visitors[seq % 3], [None, f"id-{seq}"][seq % 2])
        for seq in range(1, 40)
    ]
    # An entry whose line lacks the fields (as in old files) keeps them aside.
    entries.append(Entry(40, 1.5, "c", "visitor-9", "id-40", b'{"seq":40}'))
    ring = Ring(30, chunk=4)
    ring.extend(entries[:17])
    ring.extend(entries[17:])
    kept = entries[-30:]
    assert list(ring) == kept
    assert list(reversed(ring)) == kept[::-1]
    assert ring.newest(7) == kept[::-1][:7]
    assert ring.after(25) == [e for e in kept if e.seq > 25]
    assert ring.evicted == 10
    assert ring.counts() == {"a": 14, "b": 15, "c": 1}


@pytest.mark.parametrize("limit", [0, 1, 3, 9, 13, 30, 100])
def test_event_ids_are_the_newest_entries_ids(limit: int) -> None:
    ids = [None, "id-x", "", 'odd "id"', "id-y"]  # "" counts as no id
    entries = [stored(seq, "a", "v", ids[seq % 5]) for seq in range(1, 40)]
    entries.append(Entry(40, 1.5, "c", "v", "id-40", b'{"seq":40}'))  # kept aside
    ring = Ring(30, chunk=4)
    ring.extend(entries[:31])  # evicts inside the first chunk
    ring.extend(entries[31:])  # leaves some entries not yet packed
    newest = list(ring)[-limit:] if limit else []
    assert ring.event_ids(limit) == [e.event_id for e in newest if e.event_id]


def test_newest_by_event_name_uses_the_index_and_matches_a_scan() -> None:
    ring = Ring(1000, chunk=16)
    names = ["page_view"] * 40 + ["click"] * 9 + ["purchase"]
    ring.extend(
        stored(seq, names[seq % len(names)], "visitor-1", None)
        for seq in range(1, 1500)
    )
    everything = list(reversed(ring))
    for wanted in ({"purchase"}, {"click", "purchase"}, {"nothing"}, set()):
        expected = [e for e in everything if e.event in wanted][:25]
        assert ring.newest(25, events=wanted) == expected
    odd_seq = ring.newest(3, lambda e: e.seq % 2 == 1, events={"click"})
    assert odd_seq == [e for e in everything if e.event == "click" and e.seq % 2][:3]


def test_eviction_drops_packed_chunks_and_keeps_counts() -> None:
    ring = Ring(10, chunk=4)
    for seq in range(1, 101):
        ring.extend([stored(seq, "ab"[seq % 3 == 0], "visitor-1", None)])
        kept = list(ring)
        assert [e.seq for e in kept] == list(range(max(1, seq - 9), seq + 1))
        expected: dict[str, int] = {}
        for e in kept:
            expected[e.event] = expected.get(e.event, 0) + 1
        assert ring.counts() == expected
    assert ring.evicted == 90


def test_counts_match_packed_contents_for_small_and_large_groups() -> None:
    # Groups of up to 8 are counted one by one, larger ones with a Counter: both
    # ways in, and both ways out of packed chunks and of the unpacked tail.
    ring = Ring(40, chunk=16)
    names = ["a", "b", "c"]
    seq = 0
    for size in [1, 3, 9, 20, 2, 33, 8, 50, 1, 17, 5]:
        group = []
        for _ in range(size):
            seq += 1
            group.append(entry(seq, names[seq * seq % 3]))
        ring.extend(group)
        held = list(ring)
        assert seqs(held) == list(range(max(1, seq - 39), seq + 1))
        expected: dict[str, int] = {}
        for e in held:
            expected[e.event] = expected.get(e.event, 0) + 1
        assert ring.counts() == expected


def test_a_large_ring_stays_consistent_across_batches() -> None:
    ring = Ring(1000)
    names = ["page_view", "link_click", "signup"]
    seq = 0
    for size in [1, 7, 300, 999, 1000, 1001, 2, 190]:  # 3500 in all
        batch = []
        for _ in range(size):
            seq += 1
            batch.append(entry(seq, names[seq % 3]))
        ring.extend(batch)
        held = list(ring)
        assert seqs(held) == list(range(max(1, seq - 999), seq + 1))
        assert len(ring) == len(held)
        assert ring.evicted == seq - len(held)
        expected: dict[str, int] = {}
        for e in held:
            expected[e.event] = expected.get(e.event, 0) + 1
        assert ring.counts() == expected
    assert seqs(list(reversed(ring))) == list(range(3500, 2500, -1))
    assert seqs(ring.newest(3)) == [3500, 3499, 3498]
    assert seqs(ring.after(3497)) == [3498, 3499, 3500]
    assert seqs(ring.after(2000)) == list(range(2501, 3501))
    assert seqs(ring.after(2750))[:2] == [2751, 2752]
    assert [orjson.loads(e.line) for e in ring.newest(1)] == [
        {"seq": 3500, "event": "signup"}
    ]
    signups = ring.newest(4, lambda e: e.event == "signup")
    assert seqs(signups) == [3500, 3497, 3494, 3491]


def test_select_by_event_and_after_matches_a_scan() -> None:
    ring = Ring(500, chunk=8)
    ring.extend(stored(seq, "abc"[seq % 3], "visitor-1", None) for seq in range(1, 700))
    everything = list(ring)
    for names in (None, {"a"}, {"b", "c"}, set()):
        for after in (None, 0, 350, 650, 699):
            expected = [
                e
                for e in everything
                if (names is None or e.event in names)
                and (after is None or e.seq > after)
            ]
            assert ring.select(names, after) == expected


def test_compact_keeps_everything() -> None:
    ring = Ring(50, chunk=8)
    ring.extend(
        stored(seq, "ab"[seq % 2], 'odd "visitor"', f"id-{seq}") for seq in range(1, 80)
    )
    before, counts = list(ring), dict(ring.counts())
    ring.compact()
    assert list(ring) == before
    assert ring.counts() == counts
    assert (
        ring.newest(5, events={"a"})
        == [e for e in reversed(before) if e.event == "a"][:5]
    )
    ring.extend([stored(80, "a", "visitor-1", None)])
    assert [e.seq for e in ring.newest(2)] == [80, 79]


def test_repacked_copies_and_empties_the_input() -> None:
    originals = ["abc", "", "é-ü", "x" * 100]
    given = list(originals)
    copies = repacked(given)
    assert copies == originals
    assert given == []


def test_select_by_visitor_and_event_id_returns_every_match() -> None:
    visitors = ["visitor-1", "visitor-10", 'has "quotes"']
    ring = Ring(300, chunk=16)
    ring.extend(
        stored(seq, "ab"[seq % 2], visitors[seq % 3], f"id-{seq % 4}")
        for seq in range(1, 400)
    )
    everything = list(ring)
    for visitor_id in visitors:
        for event_id in (None, "id-1", "id-9"):
            got = ring.select({"a"}, 150, visitor_id=visitor_id, event_id=event_id)
            exact = [
                e
                for e in everything
                if e.event == "a"
                and e.seq > 150
                and e.visitor_id == visitor_id
                and event_id in (None, e.event_id)
            ]
            # Candidates: every match, in seq order, maybe a few more for the caller.
            assert [e for e in got if e in exact] == exact
            assert all(e.event == "a" and e.seq > 150 for e in got)


def test_select_by_time_window_is_exact() -> None:
    ring = Ring(200, chunk=8)
    ring.extend(stored(seq, "ab"[seq % 2], "visitor-1", None) for seq in range(1, 300))
    everything = list(ring)  # ts is seq + 0.25
    got = ring.select({"b"}, 120, since=150.25, until=201.0)
    assert got == [e for e in everything if e.event == "b" and 150.25 <= e.ts <= 201.0]
    assert ring.select(since=1000.0) == []
    assert ring.select(until=110.25) == [e for e in everything if e.ts <= 110.25]
