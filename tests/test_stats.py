from __future__ import annotations

import gzip
import io
from pathlib import Path

import orjson
import pytest

from metrics_service.cli import main
from metrics_service.stats import DistinctCounter, SeqRanges, collect, default_files
from metrics_service.terminal import Progress


def line(seq: int, name: str, visitor: str, second: int) -> bytes:
    return (
        orjson.dumps(
            {
                "seq": seq,
                "received_at": "2026-03-01T10:00:00.000Z",
                "timestamp": f"2026-03-01T10:00:{second:02d}.000Z",
                "event": name,
                "visitor_id": visitor,
                "metadata": {},
                "user_agent": None,
            }
        )
        + b"\n"
    )


@pytest.fixture
def sink(tmp_path: Path) -> Path:
    with gzip.open(tmp_path / "m-20260301T100000-1.jsonl.gz", "wb") as fh:
        fh.write(
            line(1, "page_view", "visitor-a", 5) + line(2, "signup", "visitor-b", 1)
        )
    (tmp_path / "m-20260301T100010-3.jsonl").write_bytes(
        line(3, "page_view", "visitor-a", 9) + b"garbage\n"
    )
    path = tmp_path / "m.jsonl"
    path.write_bytes(line(4, "page_view", "visitor-c", 30) + b'{"seq":5,"ev')
    return path


def test_default_files_are_segments_then_sink(sink: Path) -> None:
    assert [p.name for p in default_files(sink)] == [
        "m-20260301T100000-1.jsonl.gz",
        "m-20260301T100010-3.jsonl",
        "m.jsonl",
    ]


def test_stats_json_over_sink_and_segments(
    sink: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METRICS_JSONL", str(sink))
    assert main(["stats", "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["events"] == 4
    assert out["malformed_lines"] == 2  # "garbage" and the torn last line
    assert out["distinct_visitors"] == 3
    assert out["distinct_visitors_exact"] is True
    assert out["first_timestamp"] == "2026-03-01T10:00:01.000Z"
    assert out["last_timestamp"] == "2026-03-01T10:00:30.000Z"
    assert (out["first_seq"], out["last_seq"]) == (1, 4)
    assert out["by_event"] == [
        {"event": "page_view", "count": 3},
        {"event": "signup", "count": 1},
    ]
    assert len(out["files"]) == 3


def test_stats_table_for_named_files(
    sink: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", str(sink)]) == 0
    captured = capsys.readouterr()
    assert "events             1" in captured.out
    assert "malformed lines    1" in captured.out
    assert "page_view" in captured.out
    assert captured.err == ""  # no progress bar when stderr is not a terminal


def test_stats_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


def test_truncated_gzip_is_reported_not_fatal(tmp_path: Path) -> None:
    segment = tmp_path / "m-20260301T100000-1.jsonl.gz"
    data = gzip.compress(b"".join(line(i, "e", "visitor-a", 1) for i in range(1, 500)))
    segment.write_bytes(data[: len(data) // 2])
    stats = collect([segment])
    assert stats.errors and str(segment) in stats.errors[0]


def test_distinct_counter_switches_to_an_estimate() -> None:
    counter = DistinctCounter(limit=5_000, k=1024)
    for i in range(40_000):
        counter.add(f"visitor-{i}")
        counter.add(f"visitor-{i // 2}")
    assert not counter.exact
    assert abs(counter.count() - 40_000) / 40_000 < 0.1
    small = DistinctCounter()
    for name in ["a", "b", "a"]:
        small.add(name)
    assert (small.exact, small.count()) == (True, 2)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_only_on_a_terminal(sink: Path) -> None:
    terminal = FakeTerminal()
    big = sink.with_name("big.jsonl")
    big.write_bytes(b"".join(line(i, "e", "visitor-a", 1) for i in range(1, 20_000)))
    stats = collect([big], stream=terminal)
    assert stats.events == 19_999
    assert "%" in terminal.getvalue()
    assert not Progress(100, io.StringIO()).enabled


def test_event_names_cannot_drive_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = [
        "\x1b]0;pwned\x07title",  # sets the terminal's title
        "\x1b[2J\x1b[Hclear",
        "rev\u202eersed",  # right-to-left override
        "zero\u200bwidth",
        "csi\x9b31m",
    ]
    path = tmp_path / "foreign.jsonl"
    path.write_bytes(
        b"".join(line(i, name, "visitor-a", i) for i, name in enumerate(hostile, 1))
    )
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "\u202e" not in out and "\u200b" not in out
    assert "\\x1b]0;pwned\\x07title" in out
    assert "rev\\u202eersed" in out
    assert main(["stats", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x9b" not in out
    names = {row["event"] for row in orjson.loads(out)["by_event"]}
    assert names == set(hostile)  # the same JSON, escaped


def named(seq: int, instance: str | None, name: str = "e") -> bytes:
    data = line(seq, name, "visitor-a", 1)
    if instance is None:
        return data
    return data.replace(
        b'Z","timestamp"', b'Z","instance":"%s","timestamp"' % instance.encode()
    )


def test_seqs_of_several_collectors_are_counted_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # web-1: 1-5 with 3 missing and 2 twice; web-2: 1-4 complete (its 1 and 2 are
    # not web-1's); lines without a name: 7, 9 (8 missing).
    a.write_bytes(b"".join(named(s, "web-1") for s in (1, 2, 2, 4, 5)) + named(7, None))
    b.write_bytes(b"".join(named(s, "web-2") for s in (1, 2, 3, 4)) + named(9, None))
    assert main(["stats", str(a), str(b), "--json"]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out["events"] == 11
    assert (out["missing_seqs"], out["duplicate_seqs"]) == (2, 1)
    assert out["instances"] == [
        {"instance": None, "events": 2, "first_seq": 7, "last_seq": 9}
        | {"missing_seqs": 1, "duplicate_seqs": 0},
        {"instance": "web-1", "events": 5, "first_seq": 1, "last_seq": 5}
        | {"missing_seqs": 1, "duplicate_seqs": 1},
        {"instance": "web-2", "events": 4, "first_seq": 1, "last_seq": 4}
        | {"missing_seqs": 0, "duplicate_seqs": 0},
    ]
    assert main(["stats", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "missing seqs       2" in table
    assert "duplicate seqs     1" in table
    assert "web-1          5      1 … 5        1           1" in table


def test_one_collector_without_a_name_has_no_instance_table(
    sink: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", str(sink)]) == 0
    table = capsys.readouterr().out
    assert "missing seqs       0" in table
    assert "instance" not in table


def test_seq_ranges_merge_in_any_order() -> None:
    ranges = SeqRanges()
    for seq in (5, 1, 3, 2, 9, 4, 3, 8, 7, 6, 10, 1):
        ranges.add(seq)
    assert (ranges.starts, ranges.ends) == ([1], [10])
    assert (ranges.events, ranges.missing, ranges.duplicates) == (12, 0, 2)
    ranges.add(20)
    assert (ranges.starts, ranges.ends, ranges.missing) == ([1, 20], [10, 20], 9)
