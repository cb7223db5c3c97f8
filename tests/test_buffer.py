from __future__ import annotations

import orjson
import pytest

from metrics_service.buffer import Entry, Ring


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


def test_entry_as_dict_parses_the_line() -> None:
    assert entry(9, "a").as_dict() == {"seq": 9, "event": "a"}
