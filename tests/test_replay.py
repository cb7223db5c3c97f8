from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import NoReturn

import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service import Config, _native, create_app
from metrics_service.store import columns, tail
from metrics_service.store import replay as recovery
from metrics_service.store.chunk import Columns, Entry, Packed, readback
from metrics_service.store.replay import replay
from metrics_service.store.ring import Ring
from metrics_service.store.tail import repair_torn_tail, reverse_lines


def stored(seq: int, name: str = "page_view", **extra: object) -> bytes:
    line = {
        "seq": seq,
        "received_at": "2026-01-01T00:00:00.000Z",
        "timestamp": f"2026-01-01T00:00:{seq % 60:02d}.000Z",
        "event": name,
        "visitor_id": f"visitor-{seq % 7}",
        **extra,
        "metadata": {},
        "user_agent": None,
    }
    return orjson.dumps(line) + b"\n"


def test_torn_tail_moves_to_torn_file_and_truncates(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = tmp_path / "m.jsonl"
    good = stored(1) + stored(2)
    sink.write_bytes(good + b'{"seq":3,"recei')
    with caplog.at_level(logging.WARNING, logger="metrics_service"):
        moved = repair_torn_tail(sink)
    assert moved == len(b'{"seq":3,"recei')
    assert sink.read_bytes() == good
    assert (tmp_path / "m.jsonl.torn").read_bytes() == b'{"seq":3,"recei\n'
    assert "15 bytes" in caplog.text


def test_torn_tail_appends_to_an_existing_torn_file(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    (tmp_path / "m.jsonl.torn").write_bytes(b"older\n")
    sink.write_bytes(b"no newline at all")
    assert repair_torn_tail(sink) == len(b"no newline at all")
    assert sink.read_bytes() == b""
    assert (tmp_path / "m.jsonl.torn").read_bytes() == b"older\nno newline at all\n"


def test_clean_file_is_left_alone(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(stored(1))
    assert repair_torn_tail(sink) == 0
    assert repair_torn_tail(tmp_path / "missing.jsonl") == 0
    assert not (tmp_path / "m.jsonl.torn").exists()


def test_start_up_repairs_and_continues_seq(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl")
    config.jsonl.write_bytes(stored(1) + stored(2) + b'{"seq":3,"ev')
    with TestClient(create_app(config)) as c:
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 3
    assert [line["seq"] for line in read_lines(config.jsonl)] == [1, 2, 3]


def test_reverse_lines_reads_across_chunks(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    # Lines far longer than the read chunk, and a torn tail that must not show up.
    data = [stored(i, pad="x" * 100_000 * (i % 3)) for i in range(1, 8)]
    sink.write_bytes(b"".join(data) + b'{"torn')
    assert list(reverse_lines(sink)) == [line[:-1] for line in reversed(data)]


def test_replay_restores_ring_counts_and_seq(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ring_capacity=5)
    names = ["a", "b", "a", "c", "a", "b", "b"]
    config.jsonl.write_bytes(
        b"".join(stored(i, name) for i, name in enumerate(names, 1))
    )
    with TestClient(create_app(config)) as c:
        r = c.get(SNAPSHOT_URL)
        assert r.status_code == 200
        body = r.json()
        assert body["total"] == 5
        assert body["last_seq"] == 7
        assert body["by_event"] == [
            {"event": "a", "count": 2},
            {"event": "b", "count": 2},
            {"event": "c", "count": 1},
        ]
        assert [e["seq"] for e in body["last_events"]] == [7, 6, 5, 4, 3]
        assert body["last_events"][0] == orjson.loads(stored(7, "b"))
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 8


def test_replay_off_keeps_ring_empty_but_continues_seq(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", replay=False)
    config.jsonl.write_bytes(stored(1) + stored(2))
    with TestClient(create_app(config)) as c:
        body = c.get(SNAPSHOT_URL).json()
        assert body["total"] == 0
        assert body["last_seq"] == 2


def test_replay_skips_malformed_lines(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(stored(1) + b"not json\n" + b"[1,2]\n" + stored(2) + b"\n")
    found = replay(sink, 10)
    assert [e.seq for e in found.entries] == [1, 2]
    assert found.last_seq == 2
    assert found.skipped == 2


def test_replay_reads_rotated_segments_when_the_sink_is_short(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    old = tmp_path / "m-20260101T000000-1.jsonl.gz"
    with gzip.open(old, "wb") as fh:
        fh.write(b"".join(stored(i) for i in range(1, 5)))
    (tmp_path / "m-20260101T000100-5.jsonl").write_bytes(
        b"".join(stored(i) for i in range(5, 8))
    )
    sink.write_bytes(stored(8) + stored(9))
    found = replay(sink, 6)
    assert [e.seq for e in found.entries] == [4, 5, 6, 7, 8, 9]
    assert found.last_seq == 9
    everything = replay(sink, 100)
    assert [e.seq for e in everything.entries] == list(range(1, 10))


def test_seq_continues_from_segments_after_rotation_left_an_empty_sink(
    tmp_path: Path,
) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", replay=False)
    (tmp_path / "m-20260101T000000-1.jsonl").write_bytes(stored(1) + stored(2))
    config.jsonl.write_bytes(b"")
    with TestClient(create_app(config)) as c:
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 3


def test_replayed_event_ids_are_deduplicated(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl")
    config.jsonl.write_bytes(stored(1, event_id="abc-1"))
    with TestClient(create_app(config)) as c:
        r = c.post(EVENT_URL, json=event(event_id="abc-1"))
        assert r.status_code == 202
        assert r.json()["stored"] == 0
        assert r.json()["duplicates"] == 1
    assert len(read_lines(config.jsonl)) == 1


def test_replay_reads_only_the_end_of_a_huge_sink(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    with open(sink, "wb") as fh:
        fh.write(stored(1))
        fh.seek(4 * 1024**3)  # a sparse 4 GiB hole: reading it all would not fit
        fh.write(b"\n" + b"".join(stored(i) for i in range(2, 12)))
    found = replay(sink, 5)
    assert [e.seq for e in found.entries] == [7, 8, 9, 10, 11]
    assert found.last_seq == 11


def test_interrupted_compression_is_finished_at_start_up(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", rotate_bytes=10_000)
    segment = tmp_path / "m-20260101T000000-1.jsonl"
    segment.write_bytes(stored(1) + stored(2))
    (tmp_path / ".m-20260101T000000-1.jsonl.gz.partial").write_bytes(b"\x1f\x8b")
    config.jsonl.write_bytes(stored(3))
    with TestClient(create_app(config)) as c:
        assert c.get(SNAPSHOT_URL).json()["total"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m-20260101T000000-1.jsonl.gz",
        "m.jsonl",
    ]
    data = gzip.decompress((tmp_path / "m-20260101T000000-1.jsonl.gz").read_bytes())
    assert data == stored(1) + stored(2)


def _rows(ring: Ring) -> list[Entry]:
    return list(ring)


def _ring_of(parts: list[Columns | Packed], capacity: int) -> Ring:
    ring = Ring(capacity)
    ring.load(parts)
    return ring


@pytest.fixture
def native() -> bool:
    """Whether C does the work: `make test` runs the suite with it and without."""
    return _native.c is not None


def _forbid(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Fail the test if columns.<name> is called: the fast path must do without it."""

    def called(*args: object) -> NoReturn:
        raise AssertionError(args)

    monkeypatch.setattr(columns, name, called)


MILLIS = [1, 3, 7, 123, 300, 555, 701, 999]
ODD_LINES = [
    stored(1),
    stored(2, event_id="id-2"),
    b"\n",
    stored(3, "sign\\u00e9d"),  # escapes in event: the full parse
    stored(4, "click", event_id='quo"te'),
    orjson.dumps(
        {"seq": 5, "timestamp": "2026-01-01T00:00:05.000Z", "event": "a\nb"}
        | {"visitor_id": 'v"1', "metadata": {}}
    )
    + b"\n",
    stored(6, "été", event_id="ü-6"),  # non-ASCII, no escapes: the fast path
    stored(7).replace(b'"metadata":{}', b'"metadata":{"event_id":"nested"}'),
    stored(8).replace(b'"user_agent":null', b'"event":"again"'),  # duplicate key
    stored(9).replace(b"T00:00:09", b"T25:00:09"),  # no such hour: skipped
    stored(10).replace(b"2026-01-01T00:00:10", b"2026-02-30T00:00:10"),
    stored(11)[:-2] + b"\n",  # not closed: skipped
    b"not json at all\n",
    stored(12).replace(b"page_view", b"\xff\xfe"),  # invalid UTF-8
    stored(14, event_id="id-14"),
    stored(13),  # out of order: sorted by seq
    stored(15).replace(b'"seq":15', b'"seq":015'),
    stored(16).replace(b"\n", b"\t\n"),
    stored(17).replace(b'"event":"page_view"', b'"event" :"page_view"'),
    stored(18, visitor_id="v\\x"),
    stored(19),
    stored(19, event_id=""),
    stored(99).replace(b'"metadata":{}', b'"metadata":{]}'),  # broken past the regex
    *(stored(20 + i).replace(b".000Z", b".%03dZ" % ms) for i, ms in enumerate(MILLIS)),
]


# Without a backslash or control character a block is read line by line with the
# regex (the odd lines aside), rather than all by the full parse.
UNESCAPED = [line for line in ODD_LINES if b"\\" not in line and b"\t" not in line]


@pytest.mark.parametrize("lines", [ODD_LINES, UNESCAPED])
@pytest.mark.parametrize("chunk", [64, 300, 4096, 256 * 1024])
@pytest.mark.parametrize("count", [1, 2, 5, 9, 15, 100])
def test_fast_load_equals_the_full_parse(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lines: list[bytes],
    chunk: int,
    count: int,
) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(b"".join(lines * 3))
    monkeypatch.setattr(tail, "BLOCK", chunk)
    slow = replay(sink, count)
    fast = recovery.load(sink, count)
    assert (fast.last_seq, fast.skipped) == (slow.last_seq, slow.skipped)
    expected, loaded = Ring(1000, chunk=4), Ring(1000, chunk=4)
    expected.extend(slow.entries)
    loaded.load(fast.parts)
    assert _rows(loaded) == _rows(expected)
    assert loaded.counts() == expected.counts()
    for window in (1, 3, 1000):
        ids = [e.event_id for e in slow.entries[-window:] if e.event_id]
        assert loaded.event_ids(window) == ids
    # Parsed by the full path, the odd lines' entries still come out equal.
    for entry in _rows(loaded):
        assert entry == columns.parse_entry(entry.line)[1]


def test_fast_load_reads_escaped_event_and_visitor_like_the_full_parse(
    tmp_path: Path,
) -> None:
    sink = tmp_path / "m.jsonl"
    line = stored(1, "a\\b", visitor_id='say "hi"', event_id="x\ty")
    sink.write_bytes(stored(2).replace(b'"seq":2', b'"seq":0') + line)
    ring = _ring_of(recovery.load(sink, 10).parts, 10)
    (only,) = [e for e in ring if e.seq == 1]
    assert only == columns.parse_entry(line[:-1])[1]
    assert (only.event, only.visitor_id, only.event_id) == ("a\\b", 'say "hi"', "x\ty")


def test_restart_replays_the_entries_live_ingest_made(tmp_path: Path) -> None:
    cfg = Config(jsonl=tmp_path / "m.jsonl")
    app = create_app(cfg)
    with TestClient(app) as client:
        for i in range(30):
            extra: dict[str, object] = {"event_id": f'e-"{i}'} if i % 3 else {}
            name = ["page_view", "click"][i % 2]
            visitor = f"visitor\\{i}" if i % 5 == 0 else f"visitor-{i % 4}"
            body = event(name, visitor_id=visitor, metadata={"k": "\n" * (i % 2)})
            response = client.post(EVENT_URL, json=body | extra)
            assert response.status_code == 202
        live = _rows(app.state.service.ring)
    again = create_app(cfg)
    with TestClient(again):
        replayed = _rows(again.state.service.ring)
    assert len(live) == 30
    # Live entries keep the receive time's microseconds, the line only milliseconds.
    assert [e._replace(ts=0) for e in replayed] == [e._replace(ts=0) for e in live]
    assert all(0 <= a.ts - b.ts < 0.001 for a, b in zip(live, replayed, strict=True))


def test_a_second_lifespan_on_the_same_app_replays_from_the_file(
    tmp_path: Path,
) -> None:
    app = create_app(Config(jsonl=tmp_path / "m.jsonl"))
    with TestClient(app) as client:
        assert client.post(EVENT_URL, json=event()).status_code == 202
    with TestClient(app) as client:
        response = client.get(SNAPSHOT_URL)
        assert response.status_code == 200
        body = response.json()
        assert (body["total"], body["last_seq"]) == (1, 1)
        assert client.post(EVENT_URL, json=event()).json()["seq"] == 2


def _load_like_replay(sink: Path, monkeypatch: pytest.MonkeyPatch) -> list[Entry]:
    """recovery.load() into a ring, checked against replay() and the full parse, with
    the whole file as one block and with (about) a block per line."""
    slow = replay(sink, 100)
    for chunk in (256 * 1024, 64):
        monkeypatch.setattr(tail, "BLOCK", chunk)
        fast = recovery.load(sink, 100)
        assert (fast.last_seq, fast.skipped) == (slow.last_seq, slow.skipped)
        ring = Ring(1000, chunk=4)
        ring.load(fast.parts)
        rows = _rows(ring)
        assert rows == slow.entries
        for entry in rows:
            assert entry == columns.parse_entry(entry.line)[1]
    return rows


def test_clean_blocks_take_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    lines = [stored(i, event_id=f"id-{i}" if i % 2 else None) for i in range(1, 40)]
    sink.write_bytes(b"".join(lines).replace(b',"event_id":null', b""))
    expected = replay(sink, 100).entries
    monkeypatch.setattr(tail, "BLOCK", 300)

    _forbid(monkeypatch, "parse_entry")
    found = recovery.load(sink, 100)
    assert (found.last_seq, found.skipped) == (39, 0)
    assert [p.odd for p in found.parts if isinstance(p, Columns) and p.odd] == []
    assert _rows(_ring_of(found.parts, 100)) == expected


def test_clean_blocks_are_packed_by_the_native_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    sink = tmp_path / "m.jsonl"
    ids = ["id-1", None, "id-3", ""]
    lines = [stored(i, "ab"[i % 2], event_id=ids[i % 4]) for i in range(1, 40)]
    sink.write_bytes(b"".join(lines))
    expected = replay(sink, 100).entries
    monkeypatch.setattr(tail, "BLOCK", 600)

    _forbid(monkeypatch, "parse_entry")
    found = recovery.load(sink, 100)
    packed = sum(len(part.seqs) for part in found.parts if isinstance(part, Packed))
    assert packed == (39 if native else 0)
    ring = _ring_of(found.parts, 100)
    assert _rows(ring) == expected
    assert ring.event_ids(100) == [e.event_id for e in expected if e.event_id]


def test_replay_without_the_native_module_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, native: bool
) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(stored(1))
    with caplog.at_level(logging.WARNING, logger="metrics_service"):
        assert recovery.load(sink, 10).last_seq == 1
    assert ("without its C extension" in caplog.text) != native


def test_a_block_msgspec_rejects_still_loads_its_good_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    bad = stored(2).replace(b'"seq":2', b'"seq":"2"')
    sink.write_bytes(stored(1) + bad + stored(3) + b"{}\n" + stored(4))
    rows = _load_like_replay(sink, monkeypatch)
    assert [e.seq for e in rows] == [1, 3, 4]


def test_duplicate_top_level_visitor_id_keeps_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    twice = stored(2).replace(b'"metadata"', b'"visitor_id":"second","metadata"')
    sink.write_bytes(stored(1) + twice + stored(3))
    rows = _load_like_replay(sink, monkeypatch)
    assert [e.visitor_id for e in rows] == ["visitor-1", "second", "visitor-3"]


def test_escaped_visitor_id_is_read_unescaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(stored(1) + stored(2, visitor_id='say "hi"') + stored(3))
    rows = _load_like_replay(sink, monkeypatch)
    assert rows[1].visitor_id == 'say "hi"'


def test_a_nested_or_spaced_key_is_not_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    nested = orjson.dumps(
        {"seq": 2, "metadata": {"visitor_id": "nested", "event_id": "n"}}
        | {"timestamp": "2026-01-01T00:00:02.000Z", "event": "a", "visitor_id": "v2"}
    )
    after = stored(3).replace(b'"metadata":{}', b'"metadata":{"visitor_id":"x"}')
    # A spaced top-level key, with a nested one as many `"visitor_id":"` as lines.
    spaced = stored(4, event_id="e4").replace(b'"visitor_id":', b'"visitor_id" :')
    spaced = spaced.replace(b'"metadata":{}', b'"metadata":{"visitor_id":"x"}')
    only = stored(5, event_id="e5").replace(b'"event_id":', b'"event_id": ')
    both = stored(6, event_id="e6").replace(b'"event_id":', b'"event_id" :')
    both = both.replace(b'"metadata":{}', b'"metadata":{"event_id":"x"}')
    loose = stored(7).replace(b'"visitor_id":', b'"visitor_id": ')
    sink.write_bytes(stored(1) + nested + b"\n" + after + spaced + only + both + loose)
    rows = _load_like_replay(sink, monkeypatch)
    assert [(e.visitor_id, e.event_id) for e in rows] == [
        ("visitor-1", None),
        ("v2", None),
        ("visitor-3", None),
        ("visitor-4", "e4"),
        ("visitor-5", "e5"),
        ("visitor-6", "e6"),
        ("visitor-0", None),
    ]


@pytest.mark.parametrize(
    ("stamp", "ts"),
    [
        ("2026-01-01T01:00:00+0100", 1767225600.0),  # 24 characters, not UTC
        ("2026-01-01 00:00:01.000Z", 1767225601.0),
        ("2026-01-01T00:00:02Z", 1767225602.0),
        ("2026-01-01T00:00:03.5Z", 1767225603.5),
        ("2026-02-30T00:00:00.000Z", None),  # no such day: skipped
        ("2026-01-01T00:00:60.000Z", None),
        ("2026-01-01T000002.1.000Z", None),  # a time of its own before ".000Z"
        ("2026-01-01T00:00:02.00xZ", None),
    ],
)
def test_an_unusual_timestamp_is_read_as_the_full_parse_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stamp: str, ts: float | None
) -> None:
    sink = tmp_path / "m.jsonl"
    odd = stored(2).replace(b"2026-01-01T00:00:02.000Z", stamp.encode())
    sink.write_bytes(stored(1) + odd + stored(3))
    rows = _load_like_replay(sink, monkeypatch)
    assert [e.ts for e in rows if e.seq == 2] == ([] if ts is None else [ts])


def test_a_block_spanning_two_months_gets_each_time_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    lines = [
        stored(i).replace(b"2026-01-01T00:00:%02d.000Z" % (i % 60), stamp)
        for i, stamp in enumerate(
            [b"2026-01-31T23:59:59.999Z", b"2026-02-01T00:00:00.001Z"], 1
        )
    ]
    sink.write_bytes(b"".join(lines))
    rows = _load_like_replay(sink, monkeypatch)
    assert [e.ts for e in rows] == [1769903999.999, 1769904000.001]


def test_a_line_that_is_not_one_object_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    two = stored(3)[:-1] + stored(4)
    opened = stored(2).replace(b'"metadata":{}', b'"metadata":\n{}')
    closed = stored(2).replace(b'"metadata":{}', b'"metadata":{}\n')
    for split in (opened, closed):
        sink.write_bytes(stored(1) + split + two + stored(5))
        rows = _load_like_replay(sink, monkeypatch)
        assert [e.seq for e in rows] == [1, 5]


def test_a_seq_beyond_64_bits_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    huge = stored(2).replace(b'"seq":2', b'"seq":%d' % 2**63)
    sink.write_bytes(stored(1) + huge + stored(3))
    rows = _load_like_replay(sink, monkeypatch)
    assert [e.seq for e in rows] == [1, 3]
    assert recovery.load(sink, 100).skipped == 1


def test_replayed_event_names_are_one_string_each(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(b"".join(stored(i, ["a", "b"][i % 2]) for i in range(1, 50)))
    events = [e.event for e in _ring_of(recovery.load(sink, 100).parts, 100)]
    assert len(events) == 49
    assert len({id(name) for name in events}) == 2


def test_other_keys_ending_in_id_keep_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    meta = b'"metadata":{"product_id":"p-1","session_id":"s","visitor":"v"}'
    lines = [
        stored(i, event_id=f"e{i}").replace(b'"metadata":{}', meta) for i in (1, 2)
    ]
    sink.write_bytes(b"".join(lines))
    expected = replay(sink, 10).entries

    _forbid(monkeypatch, "readback")
    found = recovery.load(sink, 10)
    assert _rows(_ring_of(found.parts, 10)) == expected


def test_only_lines_with_a_backslash_are_read_back_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    tricky = orjson.dumps(
        {
            "seq": 2,
            "note": '"visitor_id":"fake"',
            "timestamp": "2026-01-01T00:00:02.000Z",
        }
        | {"event": "a", "visitor_id": "v2", "metadata": {}}
    )
    sink.write_bytes(stored(1) + tricky + b"\n" + stored(3, event_id="e3"))
    read_back: list[bytes] = []

    def counted(visitor_id: str, event_id: str | None, line: bytes) -> int:
        read_back.append(line)
        return readback(visitor_id, event_id, line)

    monkeypatch.setattr(columns, "readback", counted)
    rows = _load_like_replay(sink, monkeypatch)
    assert [e.visitor_id for e in rows] == ["visitor-1", "v2", "visitor-3"]
    assert set(read_back) == {tricky}


@pytest.mark.parametrize("named", [1, 256])
def test_a_name_first_seen_in_an_older_block_keeps_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: int
) -> None:
    sink = tmp_path / "m.jsonl"
    names = ["old"] * 5 + ["mid", "a"] * 5 + ["a", "b"] * 10
    sink.write_bytes(b"".join(stored(i, name) for i, name in enumerate(names, 1)))
    expected = replay(sink, 100).entries
    monkeypatch.setattr(tail, "BLOCK", 600)  # a few lines a block
    monkeypatch.setattr(columns, "_NAMED", named)

    _forbid(monkeypatch, "parse_entry")
    found = recovery.load(sink, 100)
    ring = _ring_of(found.parts, 100)
    assert _rows(ring) == expected
    assert ring.counts() == {"old": 5, "mid": 5, "a": 15, "b": 10}
    assert len({id(entry.event) for entry in ring}) == 4


def test_a_block_with_a_new_name_and_a_bad_line_loads_its_good_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "m.jsonl"
    bad = stored(2, "new").replace(b'"seq":2', b'"seq":"2"')
    lines = [stored(1, "new"), bad, stored(3, "new"), *(stored(i) for i in range(4, 9))]
    sink.write_bytes(b"".join(lines))
    monkeypatch.setattr(tail, "BLOCK", 3 * len(lines[0]))
    fast = recovery.load(sink, 100)
    assert (fast.last_seq, fast.skipped) == (8, 1)
    ring = _ring_of(fast.parts, 100)
    assert _rows(ring) == replay(sink, 100).entries
    assert [e.seq for e in ring] == [1, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_blocks_are_whole_lines_that_rebuild_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    sink = tmp_path / "m.jsonl"
    data = b"a\n" + b"x" * 300 + b"\n\nbc\n" + stored(1) + b"torn"
    sink.write_bytes(data)
    monkeypatch.setattr(tail, "BLOCK", chunk)
    blocks = list(tail.reverse_blocks(sink))
    assert all(block.endswith(b"\n") for block in blocks)
    assert all(len(block) < chunk + 302 for block in blocks)  # 302: longest line
    assert b"".join(reversed(blocks)) == data[: data.rindex(b"\n") + 1]


def test_a_corrupt_huge_seq_refuses_events_with_503_and_health_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(stored(1) + stored(9223372036854775806) + stored(2))
    app = create_app(Config(jsonl=sink))
    with caplog.at_level(logging.ERROR, "metrics_service"), TestClient(app) as client:
        single = client.post(EVENT_URL, json=event())
        batch = client.post("/api/metrics/events", json=[event(), event()])
        health = client.get("/api/metrics/behavior/health")
        snapshot = client.get(SNAPSHOT_URL)
    assert (single.status_code, batch.status_code) == (503, 503)
    detail = single.json()["detail"]
    assert f"{sink}:{len(stored(1))} holds seq 9223372036854775806" in detail
    assert health.status_code == 503 and health.json()["error"] == detail
    assert snapshot.status_code == 200 and snapshot.json()["total"] == 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        detail
    ]
    assert sink.read_bytes().count(b"\n") == 3


def test_start_up_logs_what_it_replayed_and_where_it_skipped_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = tmp_path / "m.jsonl"
    bad = [
        b"{broken\n",
        b"[1,2]\n",
        b'"text"\n',
        b'{"seq":3,"x":1e400}\n',
        b'{"seq":4,"event":"\\ud800"}\n',
        b'{"seq":7}\n',
    ]
    data = stored(1) + b"".join(bad) + stored(8) + b'{"seq":9,"torn'
    sink.write_bytes(data)
    app = create_app(Config(jsonl=sink))
    with caplog.at_level(logging.INFO, "metrics_service"), TestClient(app) as client:
        assert client.get(SNAPSHOT_URL).json()["total"] == 2
    [line] = [r.getMessage() for r in caplog.records if "replayed" in r.getMessage()]
    assert line.startswith(f"replayed 2 events from {sink} in ")
    assert "last seq 8" in line
    assert "a torn last line of 14 bytes" in line
    assert "6 unreadable lines" in line
    offset = len(stored(1)) + sum(map(len, bad[:5]))
    assert f"{sink}:{offset}: no event string" in line  # {"seq":7}, the newest
    offset -= len(bad[4])
    assert f"{sink}:{offset}: not JSON (" in line  # the lone surrogate
    offset -= len(bad[3])
    assert f"{sink}:{offset}: not JSON (" in line  # 1e400


def test_a_sink_with_crlf_line_endings_serves_lines_without_cr(
    tmp_path: Path,
) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_bytes(b"".join(stored(seq).replace(b"\n", b"\r\n") for seq in (1, 2)))
    with TestClient(create_app(Config(jsonl=sink))) as client:
        response = client.get(SNAPSHOT_URL)
        assert client.post(EVENT_URL, json=event()).json()["seq"] == 3
    assert response.status_code == 200
    assert b"\\r" not in response.content and b"\r" not in response.content
    assert [e["seq"] for e in response.json()["last_events"]] == [2, 1]


def keyed(
    seq: int, instance: str | None, test_id: str | None, **extra: object
) -> bytes:
    """A stored line with the collector's optional keys where it writes them."""
    line = stored(seq, event_id=f"id-{seq}" if seq % 2 else None, **extra)
    line = line.replace(b',"event_id":null', b"")
    if instance is not None:
        line = line.replace(
            b'Z","timestamp"', b'Z","instance":"%s","timestamp"' % instance.encode(), 1
        )
    if test_id is not None:
        tag = b',"test_id":' + orjson.dumps(test_id)
        line = line.replace(b',"metadata":', tag + b',"metadata":', 1)
    return line


def test_lines_with_instance_and_test_id_keep_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    sink = tmp_path / "m.jsonl"
    tags = [None, "tests/a.py::t[1]", "t_event_id", None]
    names = [None, "web-1", "web_2.eu", None, "a"]
    lines = [keyed(i, names[i % 5], tags[i % 4]) for i in range(1, 60)]
    sink.write_bytes(b"".join(lines))
    assert b'"instance":"web-1"' in lines[0] and b'"test_id":"t_event_id"' in lines[1]
    expected = replay(sink, 100).entries
    assert [orjson.loads(e.line).get("test_id") for e in expected[:3]] == tags[1:4]
    monkeypatch.setattr(tail, "BLOCK", 700)

    _forbid(monkeypatch, "parse_entry")
    _forbid(monkeypatch, "readback")
    found = recovery.load(sink, 100)
    assert (found.last_seq, found.skipped) == (59, 0)
    packed = sum(len(part.seqs) for part in found.parts if isinstance(part, Packed))
    assert packed == (59 if native else 0)
    ring = _ring_of(found.parts, 100)
    assert _rows(ring) == expected
    assert ring.event_ids(100) == [e.event_id for e in expected if e.event_id]


@pytest.mark.parametrize("name", ["visitor_id", "event_id", "a_visitor_id"])
@pytest.mark.parametrize(
    "tag", ['"visitor_id":"x', '"event_id":"y"', "visitor_id", "\\", "é"]
)
def test_key_like_instances_and_test_ids_are_read_as_the_full_parse_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, tag: str
) -> None:
    sink = tmp_path / "m.jsonl"
    lines = [keyed(i, name, tag if i % 3 else None) for i in range(1, 12)]
    sink.write_bytes(b"".join(lines))
    expected = replay(sink, 100).entries
    assert [(e.visitor_id, e.event_id) for e in expected] == [
        (f"visitor-{i % 7}", f"id-{i}" if i % 2 else None) for i in range(1, 12)
    ]
    monkeypatch.setattr(tail, "BLOCK", 400)
    ring = _ring_of(recovery.load(sink, 100).parts, 100)
    assert _rows(ring) == expected
    assert ring.event_ids(100) == [e.event_id for e in expected if e.event_id]


def test_a_named_collector_replays_its_own_lines(tmp_path: Path) -> None:
    cfg = Config(jsonl=tmp_path / "m.jsonl", instance="web-1")
    with TestClient(create_app(cfg)) as client:
        for name in ("a", "b"):
            headers = {"X-Metrics-Test-Id": f"t-{name}"}
            r = client.post(EVENT_URL, json=event(name, event_id=name), headers=headers)
            assert r.status_code == 202
        before = client.get(SNAPSHOT_URL).json()["last_events"]
    assert [line["instance"] for line in read_lines(cfg.jsonl)] == ["web-1", "web-1"]
    with TestClient(create_app(cfg)) as client:
        assert client.get(SNAPSHOT_URL).json()["last_events"] == before
        r = client.get(SNAPSHOT_URL, params={"test_id": "t-b"})
        assert [e["seq"] for e in r.json()["last_events"]] == [2]
        r = client.post(EVENT_URL, json=event("c", event_id="a"))  # a replayed id
        assert (r.status_code, r.json()["duplicates"]) == (202, 1)
