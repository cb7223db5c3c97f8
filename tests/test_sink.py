from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from conftest import EVENT_URL, HEALTH_URL, SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.store import tail
from metrics_service.store.replay import replay
from metrics_service.store.sink import Sink, SinkError


def lines(*seqs: int) -> bytes:
    return b"".join(orjson.dumps({"seq": s, "event": "e"}) + b"\n" for s in seqs)


def test_writes_parse_in_order(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "deep" / "er" / "m.jsonl")  # parent folders are created
    sink.open()
    sink.write(lines(1, 2))
    sink.write(lines(3))
    sink.close()
    assert [r["seq"] for r in read_lines(sink.path)] == [1, 2, 3]
    assert sink.size == sink.path.stat().st_size


def test_open_appends_and_counts_existing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(lines(1))
    sink = Sink(path)
    sink.open()
    assert sink.size == len(lines(1))
    sink.write(lines(2))
    sink.close()
    assert [r["seq"] for r in read_lines(path)] == [1, 2]


def test_the_last_seq_is_the_newest_complete_line(tmp_path: Path) -> None:
    sink = Sink(tmp_path / "m.jsonl")
    assert replay(sink.path, 0).last_seq == 0  # no file yet
    sink.open()
    assert replay(sink.path, 0).last_seq == 0  # empty file
    sink.write(lines(1, 2, 41))
    sink.close()
    assert replay(sink.path, 0).last_seq == 41


def test_the_last_seq_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(lines(6, 7) + b'{"seq":8,"ev')
    assert replay(path, 0).last_seq == 7


def test_lines_read_backwards_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(lines(*range(1, 101)))
    for block in (16, 7, 10_000):  # small blocks: lines straddle them
        monkeypatch.setattr(tail, "BLOCK", block)
        seqs = [orjson.loads(line)["seq"] for line in tail.reverse_lines(path)]
        assert seqs == list(range(100, 0, -1))


def test_write_to_an_impossible_path_raises_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sink = Sink(blocker / "m.jsonl")
    with pytest.raises(SinkError, match="cannot write"):
        sink.write(lines(1))
    assert not sink.is_open


def test_seq_continues_after_restart(config: Config) -> None:
    with TestClient(create_app(config)) as c:
        for _ in range(3):
            assert c.post(EVENT_URL, json=event()).status_code == 202
    with TestClient(create_app(config)) as c:
        r = c.post(EVENT_URL, json=event("second_run"))
        assert r.status_code == 202
        assert r.json()["seq"] == 4
        assert c.get(SNAPSHOT_URL).json()["last_seq"] == 4
    assert [r["seq"] for r in read_lines(config.jsonl)] == [1, 2, 3, 4]


def test_seq_continues_after_a_torn_tail(config: Config) -> None:
    config.jsonl.write_bytes(lines(1, 2) + b'{"seq":3,"event":"e","vis')
    with TestClient(create_app(config)) as c:
        r = c.post(EVENT_URL, json=event())
        assert r.status_code == 202
        assert r.json()["seq"] == 3


def test_a_503_names_the_cause_once_without_errno(tmp_path: Path) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full")
    with TestClient(create_app(Config(jsonl=full))) as client:
        response = client.post(EVENT_URL, json=event())
        health = client.get(HEALTH_URL)
    assert response.status_code == 503
    assert (
        response.json()["detail"] == "cannot write /dev/full: No space left on device"
    )
    assert health.status_code == 503
    assert health.json()["error"] == "cannot write /dev/full: No space left on device"
