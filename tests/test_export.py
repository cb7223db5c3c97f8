"""`metrics-service export --parquet`: the collector's files to Parquet and back."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import sys
import threading
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from conftest import EVENT_URL, event
from starlette.testclient import TestClient

from metrics_service import Config, cli, create_app, export
from metrics_service.store.line import KEYS
from metrics_service.store.rotation import readable_segments
from metrics_service.terminal import Progress

METADATA: list[dict[str, Any]] = [
    {"path": "/", "nested": {"a": [1, 2.5, None, True, {"b": "c"}]}},
    {"text": "é ü 漢字 🎉", "quote": 'a "b" \\ c', "sep": "x\u2028y"},
    {"big": 2**63 - 1, "neg": -(2**63), "float": 1.5e300, "empty": {}},
    {},
]
# Written by earlier versions or other collectors: no instance, a raw U+2028, and a
# line with every optional key.
OLD_LINES = [
    '{"seq":1,"received_at":"2025-01-02T03:04:05.006Z","timestamp":"2025-01-02T03:04:05Z",'
    '"event":"legacy","visitor_id":"visitor-old","metadata":{"s":"a\u2028b"},'
    '"user_agent":null}',
    '{"seq":7,"received_at":"2026-02-03T04:05:06.789Z","instance":"web-2",'
    '"timestamp":"2026-02-03T04:05:06.700Z","event":"signup","visitor_id":"visitor-7",'
    '"event_id":"evt-7","test_id":"checkout spec #3","metadata":{"plan":"pro"},'
    '"user_agent":"Mozilla/5.0"}',
]


def collector_files(folder: Path) -> list[Path]:
    """A rotating collector's segments (oldest first) and live sink, with events that
    use every key a client can set."""
    sink = folder / "m.jsonl"
    config = Config(jsonl=sink, rotate_bytes=1_500, rotate_keep=100, instance="web-1")
    with TestClient(create_app(config)) as c:
        for i in range(24):
            body = event(
                ("page_view", "signup", "checkout_completed")[i % 3],
                metadata=METADATA[i % len(METADATA)],
                timestamp=f"2026-03-01T10:{i:02d}:00.125Z",
            )
            if i % 2:
                body["event_id"] = f"evt-{i}"
            headers = {"User-Agent": f"agent/{i}"} if i % 5 else {}
            if i % 4 == 0:
                headers["X-Metrics-Test-Id"] = f"spec {i}"
            assert c.post(EVENT_URL, json=body, headers=headers).status_code == 202
    files = [*readable_segments(sink), sink]
    assert len(files) >= 3 and files[0].suffix == ".gz"
    return files


def stored(files: list[Path]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        out.extend(orjson.loads(line) for line in data.splitlines() if line.strip())
    return out


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    con = duckdb.connect()
    try:
        result = con.execute(f"SELECT * FROM read_parquet('{path}')")
        names = [d[0] for d in result.description]
        return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
    finally:
        con.close()


def as_line(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row as the stored line it came from (absent keys are NULL there)."""
    line = {k: v for k, v in row.items() if v is not None}
    line["metadata"] = orjson.loads(row["metadata"])
    line["user_agent"] = row["user_agent"]
    return line


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    out = dict(line)
    for key in ("received_at", "timestamp"):
        out[key] = instant(line[key]) if isinstance(line[key], str) else line[key]
    return out


def test_export_round_trips_every_key_of_live_rotated_and_old_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = collector_files(tmp_path)
    old = tmp_path / "old.jsonl"
    old.write_text("\n".join(OLD_LINES) + "\n", encoding="utf-8")
    files.append(old)
    out = tmp_path / "events.parquet"

    assert cli.main(["export", "--parquet", str(out), *map(str, files)]) == 0

    expected = stored(files)
    captured = capsys.readouterr()
    assert captured.out == (
        f"exported {len(expected)} events from {len(files)} files to {out}\n"
    )
    assert captured.err == ""  # no progress bar off a terminal
    rows = parquet_rows(out)
    assert list(rows[0]) == list(KEYS)
    assert len(rows) == len(expected) == 26
    for row, line in zip(rows, expected, strict=True):
        assert row["received_at"].utcoffset() == dt.timedelta(0)
        assert comparable(as_line(row)) == comparable(line)
    assert {"instance", "test_id", "event_id"} <= expected[-1].keys()
    assert rows[-1]["test_id"] == "checkout spec #3"
    assert rows[0]["instance"] == "web-1" and rows[0]["test_id"] == "spec 0"
    assert "instance" not in expected[-2] and rows[-2]["instance"] is None
    assert [r["seq"] for r in rows[:-2]] == list(range(1, 25))


def test_default_files_are_the_sink_and_its_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = collector_files(tmp_path)
    monkeypatch.setenv("METRICS_JSONL", str(tmp_path / "m.jsonl"))
    out = tmp_path / "all.parquet"
    assert cli.main(["export", "--parquet", str(out)]) == 0
    assert f"from {len(files)} files" in capsys.readouterr().out
    assert [r["seq"] for r in parquet_rows(out)] == list(range(1, 25))


def test_a_torn_fragment_is_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_text(OLD_LINES[0] + "\n" + OLD_LINES[1][:40], encoding="utf-8")
    out = tmp_path / "out.parquet"
    assert cli.main(["export", "--parquet", str(out), str(sink)]) == 0
    assert "exported 1 events from 1 file" in capsys.readouterr().out
    assert [r["event"] for r in parquet_rows(out)] == ["legacy"]


def test_missing_files_and_folders_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.parquet"
    assert cli.main(["export", "--parquet", str(out), str(tmp_path / "no.jsonl")]) == 2
    assert capsys.readouterr().err == (
        f"metrics-service: error: no such file: {tmp_path / 'no.jsonl'}\n"
    )
    sink = tmp_path / "m.jsonl"
    sink.write_text(OLD_LINES[0] + "\n", encoding="utf-8")
    nowhere = tmp_path / "missing" / "out.parquet"
    assert cli.main(["export", "--parquet", str(nowhere), str(sink)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not out.exists() and not nowhere.exists()


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    gz = tmp_path / "m-20260101T000000-1.jsonl.gz"
    gz.write_bytes(gzip.compress((OLD_LINES[0] + "\n").encode())[:-12])  # cut short
    out = tmp_path / "out.parquet"
    with pytest.raises(export.ExportError):
        export.to_parquet([gz], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [gz.name]


def test_without_duckdb_the_message_says_how_to_install_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sink = tmp_path / "m.jsonl"
    sink.write_text(OLD_LINES[0] + "\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "duckdb", None)  # what an absent package gives
    out = tmp_path / "out.parquet"
    assert cli.main(["export", "--parquet", str(out), str(sink)]) == 2
    err = capsys.readouterr().err
    assert "needs DuckDB" in err and "pip install 'metrics-service[parquet]'" in err
    assert not out.exists()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Engine:
    """Stands in for a DuckDB connection in the middle of a query."""

    def __init__(self) -> None:
        self.asked = threading.Event()

    def query_progress(self) -> float:
        self.asked.set()
        return 50.0


def test_progress_bar_shows_duckdbs_progress_on_a_terminal() -> None:
    terminal = Terminal()
    progress = Progress(8_000_000, terminal)
    engine = Engine()
    with export.polling(engine, progress, every=0.01):
        assert engine.asked.wait(10)
    progress.close()
    drawn = terminal.getvalue()
    assert "50%" in drawn and "4/8 MB" in drawn
    assert drawn.endswith("\r")  # the bar is wiped when done


def test_no_progress_polling_off_a_terminal() -> None:
    progress = Progress(8_000_000, io.StringIO())
    engine = Engine()
    with export.polling(engine, progress, every=0.01):
        pass
    assert not engine.asked.is_set()
