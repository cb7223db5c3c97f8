"""deploy/clickhouse.sql run as written on embedded ClickHouse (chdb), over the files
a collector with rotation on really writes."""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import EVENT_URL, event
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.store.rotation import segments

# Independent of the C-or-Python choice: make test runs it in its first pass only.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent
SQL = ROOT / "deploy" / "clickhouse.sql"
SINK = "data/metrics.jsonl"  # where the file's loads look, from the collector's folder
NAMES = ("page_view",) * 6 + ("signup",) * 3 + ("checkout_completed",)


def statements() -> list[str]:
    """The file's statements in order, comment lines dropped."""
    lines = [
        line
        for line in SQL.read_text().splitlines()
        if not line.lstrip().startswith("--")
    ]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def run_file(db: Any, folder: Path) -> dict[str, int]:
    """Every statement of the file as written, run in `folder` (which holds the
    collector's data/): the table if missing, the loads, then its count by event."""
    *work, count = statements()
    assert count.startswith("SELECT")
    with contextlib.chdir(folder):  # the file's paths are relative: data/metrics…
        for statement in work:
            db.query(statement)
        return {r["event"]: int(r["events"]) for r in rows(db, count)}


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    # Imported here: only the worker that runs these tests pays for loading the
    # engine (and pyarrow), not every worker that merely collects this module.
    from chdb import session

    db = session.Session()
    try:
        yield db
    finally:
        db.cleanup()


@pytest.fixture
def clickhouse(engine: Any) -> Any:
    engine.query("DROP DATABASE IF EXISTS metrics")
    return engine


def rows(db: Any, query: str) -> list[dict[str, Any]]:
    text = db.query(query, "JSONEachRow").bytes()
    return [orjson.loads(line) for line in text.splitlines()]


def fill(sink: Path, count: int, instance: str | None = None) -> Counter[str]:
    """`count` events through a collector that rotates every ~2 KB."""
    extra = {} if instance is None else {"instance": instance}
    config = Config(jsonl=sink, rotate_bytes=2_000, rotate_keep=100, **extra)
    sent: Counter[str] = Counter()
    with TestClient(create_app(config)) as c:
        for i in range(count):
            name = NAMES[i % len(NAMES)]
            body = event(name, metadata={"i": i, "plan": {"tier": "pro"}, "é": "ü"})
            assert c.post(EVENT_URL, json=body).status_code == 202
            sent[name] += 1
            if i % 10 == 0:  # quarantined beside the sink, never loaded
                refused = event(name, visitor_id="v")
                assert c.post(EVENT_URL, json=refused).status_code == 422
    assert config.rejected_file is not None and config.rejected_file.exists()
    return sent


def stored_lines(sink: Path) -> list[dict[str, Any]]:
    """The lines of the sink's segments, oldest first, then of the sink."""
    data = b"".join(gzip.decompress(s.read_bytes()) for s in segments(sink))
    return [orjson.loads(line) for line in (data + sink.read_bytes()).splitlines()]


def test_the_file_loaded_twice_counts_each_line_once(
    tmp_path: Path, clickhouse: Any
) -> None:
    sink = tmp_path / SINK
    sent = fill(sink, 100)
    found = segments(sink)
    assert len(found) >= 4 and all(s.suffix == ".gz" for s in found)
    lines = stored_lines(sink)
    assert lines and "instance" not in lines[0]  # the default: no such key

    assert run_file(clickhouse, tmp_path) == dict(sent)
    [first] = rows(clickhouse, "SELECT * FROM metrics.events WHERE seq = 1")
    assert first["instance"] == "" and first["event_id"] is None
    assert orjson.loads(first["metadata"]) == lines[0]["metadata"]
    stamp = dt.datetime.fromisoformat(lines[0]["received_at"])
    assert first["received_at"] == stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    # The same segments shipped again: both copies are stored until parts merge,
    # the file's FINAL count is unchanged, and OPTIMIZE ... FINAL keeps one.
    assert run_file(clickhouse, tmp_path) == dict(sent)
    [stored] = rows(clickhouse, "SELECT count() AS n FROM metrics.events")
    assert int(stored["n"]) == 200
    clickhouse.query("OPTIMIZE TABLE metrics.events FINAL")
    [merged] = rows(
        clickhouse, "SELECT count() AS n, uniqExact(seq) AS seqs FROM metrics.events"
    )
    assert (int(merged["n"]), int(merged["seqs"])) == (100, 100)


def test_a_folder_without_segments_loads_its_live_file(
    tmp_path: Path, clickhouse: Any
) -> None:
    sink = tmp_path / SINK
    sink.parent.mkdir()
    sink.write_bytes(
        b'{"seq":1,"received_at":"2026-03-01T10:15:00.000Z",'
        b'"timestamp":"2026-03-01T10:14:59.000Z","event":"signup",'
        b'"visitor_id":"visitor-1","metadata":{},"user_agent":null}\n'
    )
    assert run_file(clickhouse, tmp_path) == {"signup": 1}


def test_a_live_file_ending_in_a_torn_line_loads_its_whole_lines(
    tmp_path: Path, clickhouse: Any
) -> None:
    sink = tmp_path / SINK
    sent = fill(sink, 30)
    with open(sink, "ab") as fh:
        fh.write(b'{"seq":31,"received_at":"2026-03-01T10:1')  # a line cut short
    assert run_file(clickhouse, tmp_path) == dict(sent)
    # The collector finishes the line; the next load takes it, once.
    with open(sink, "ab") as fh:
        fh.write(
            b'5:00.000Z","timestamp":"2026-03-01T10:15:00.000Z","event":"signup",'
            b'"visitor_id":"visitor-1","metadata":{},"user_agent":null}\n'
        )
    assert run_file(clickhouse, tmp_path) == dict(sent + Counter(["signup"]))


def test_collectors_with_and_without_a_name_merge_without_collisions(
    tmp_path: Path, clickhouse: Any
) -> None:
    sent: Counter[str] = Counter()
    folders = [tmp_path / name for name in ("web-1", "web-2", "unnamed")]
    for folder, instance in zip(folders, ("web-1", "web-2", None), strict=True):
        sent += fill(folder / SINK, 30, instance)
    lines = stored_lines(folders[0] / SINK)
    assert lines[0]["instance"] == "web-1" and lines[0]["seq"] == 1
    assert "instance" not in stored_lines(folders[2] / SINK)[0]

    for _ in range(2):  # every collector's files loaded twice
        for folder in folders:
            run_file(clickhouse, folder)
    assert run_file(clickhouse, folders[0]) == dict(sent)
    per = rows(
        clickhouse,
        "SELECT instance, count() AS n, min(seq) AS lo, max(seq) AS hi"
        " FROM metrics.events FINAL GROUP BY instance ORDER BY instance",
    )
    assert [(r["instance"], int(r["n"]), int(r["lo"]), int(r["hi"])) for r in per] == [
        ("", 30, 1, 30),
        ("web-1", 30, 1, 30),
        ("web-2", 30, 1, 30),
    ]


def test_readme_shows_the_table_as_the_file_creates_it() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Beyond one machine\n", 1)[1].split("\n## ", 1)[0]
    [block] = [
        b.split("\n", 1)[1] for b in section.split("```")[1::2] if b.startswith("sql")
    ]
    assert block.startswith("CREATE TABLE") and block in SQL.read_text()
