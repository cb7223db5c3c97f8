from __future__ import annotations

import gzip
import os
import re
import threading
from pathlib import Path

import duckdb
import httpx
import orjson
import pytest
from conftest import EVENT_URL, HEALTH_URL, SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.store.rotation import readable_segments, segments
from metrics_service.testing import MetricsServer

SEGMENT = re.compile(r"^m-\d{8}T\d{6}-(\d+)\.jsonl\.gz$")


def all_lines(sink: Path) -> list[dict[str, object]]:
    """Every stored line: rotated segments oldest first, then the live sink."""
    out: list[dict[str, object]] = []
    for segment in segments(sink):
        assert segment.suffix == ".gz", f"{segment} was left uncompressed"
        data = gzip.decompress(segment.read_bytes())
        assert data.endswith(b"\n")
        out.extend(orjson.loads(line) for line in data.splitlines())
    if sink.exists():
        out.extend(read_lines(sink))
    return out


def test_rotation_names_segments_by_first_seq_and_gzips_them(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", rotate_bytes=2_000, rotate_keep=100)
    with TestClient(create_app(config)) as c:
        for _ in range(60):
            assert c.post(EVENT_URL, json=event()).status_code == 202
    found = segments(config.jsonl)
    assert len(found) >= 3
    for segment in found:
        match = SEGMENT.match(segment.name)
        assert match, segment.name
        first = orjson.loads(gzip.decompress(segment.read_bytes()).splitlines()[0])
        assert first["seq"] == int(match[1])
    assert config.jsonl.stat().st_size <= 2_000
    assert [line["seq"] for line in all_lines(config.jsonl)] == list(range(1, 61))


def test_rotation_keeps_only_the_newest_segments(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", rotate_bytes=1_000, rotate_keep=2)
    with TestClient(create_app(config)) as c:
        for _ in range(60):
            assert c.post(EVENT_URL, json=event()).status_code == 202
        last_seq = c.get(SNAPSHOT_URL).json()["last_seq"]
    kept = segments(config.jsonl)
    assert len(kept) == 2
    seqs = [line["seq"] for line in all_lines(config.jsonl)]
    assert seqs == list(range(seqs[0], last_seq + 1))


@pytest.mark.slow
def test_rotation_under_concurrent_load_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    sink = tmp_path / "m.jsonl"
    acked: list[int] = []
    lock = threading.Lock()
    env = {"METRICS_ROTATE_BYTES": "20000", "METRICS_ROTATE_KEEP": "1000"}
    with MetricsServer(sink, env=env) as server:

        def post_many(worker: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for i in range(120):
                    body = event(f"w{worker}", metadata={"i": i, "pad": "x" * 100})
                    r = http.post(EVENT_URL, json=body)
                    assert r.status_code == 202
                    with lock:
                        acked.append(r.json()["seq"])

        threads = [threading.Thread(target=post_many, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    seqs = [line["seq"] for line in all_lines(sink)]
    assert len(acked) == 720
    assert seqs == list(range(1, 721))
    assert sorted(acked) == seqs
    assert len(segments(sink)) >= 5


def test_deleted_sink_is_recreated(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl")
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, json=event()).status_code == 202
        config.jsonl.unlink()
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert [line["seq"] for line in read_lines(config.jsonl)] == [2]
        assert c.get(HEALTH_URL).json()["sink_exists"] is True


def test_renamed_sink_is_reopened_at_the_configured_path(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl")
    moved = tmp_path / "m.jsonl.1"
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, json=event()).status_code == 202
        os.rename(config.jsonl, moved)  # what logrotate does without copytruncate
        assert c.post(EVENT_URL, json=event()).status_code == 202
        assert c.post(EVENT_URL, json=event()).status_code == 202
    assert [line["seq"] for line in read_lines(moved)] == [1]
    assert [line["seq"] for line in read_lines(config.jsonl)] == [2, 3]


def test_truncated_sink_keeps_clean_lines(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl")
    with TestClient(create_app(config)) as c:
        for _ in range(3):
            assert c.post(EVENT_URL, json=event()).status_code == 202
        os.truncate(config.jsonl, 0)  # logrotate's copytruncate
        assert c.post(EVENT_URL, json=event()).status_code == 202
        size = c.get(HEALTH_URL).json()["sink_bytes"]
    assert [line["seq"] for line in read_lines(config.jsonl)] == [4]
    assert size == config.jsonl.stat().st_size


def test_duckdb_reads_rotated_and_live_files(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", rotate_bytes=3_000, rotate_keep=100)
    with TestClient(create_app(config)) as c:
        for i in range(50):
            body = event("signup" if i % 5 == 0 else "page_view", metadata={"i": i})
            assert c.post(EVENT_URL, json=body).status_code == 202
    assert len(segments(config.jsonl)) >= 2
    query = f"""
        SELECT event, count(*) AS n, min(seq) AS first, max(seq) AS last
        FROM read_json_auto('{tmp_path}/m*.jsonl*')
        GROUP BY event ORDER BY event
    """
    rows = duckdb.sql(query).fetchall()
    assert rows == [("page_view", 40, 2, 50), ("signup", 10, 1, 46)]


def test_a_segment_caught_mid_compression_is_read_once(tmp_path: Path) -> None:
    sink = tmp_path / "m.jsonl"
    plain = tmp_path / "m-20260101T000000-1.jsonl"
    plain.write_bytes(b'{"seq":1,"event":"e","visitor_id":"visitor-1"}\n')
    (tmp_path / "m-20260101T000000-1.jsonl.gz").write_bytes(
        gzip.compress(plain.read_bytes())
    )
    assert readable_segments(sink) == [plain]
    assert len(segments(sink)) == 2


def test_the_sinks_segments_and_the_rejected_files_never_mix(tmp_path: Path) -> None:
    sink, rejected = tmp_path / "m.jsonl", tmp_path / "m.rejected.jsonl"
    names = [
        "m-20260101T000000-1.jsonl.gz",
        "m-20260101T000001-9.jsonl",
        "m.rejected-20260101T000000-1.jsonl.gz",
        "m.rejected-20260101T000002-4.jsonl",
        "m.rejected.jsonl",
        ".m.rejected-20260101T000003-7.jsonl.gz.partial",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in segments(sink)] == names[:2]
    assert [p.name for p in segments(rejected)] == names[2:4]
    assert [p.name for p in readable_segments(sink)] == names[:2]
