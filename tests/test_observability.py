from __future__ import annotations

import errno
import os
import types
from pathlib import Path

import pytest
from conftest import EVENT_URL, event
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.store import sink


def scrape(c: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def test_metrics_count_accepted_rejected_and_duplicates(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ring_capacity=2)
    with TestClient(create_app(config)) as c:
        for _ in range(3):
            assert c.post(EVENT_URL, json=event()).status_code == 202
        assert c.post(EVENT_URL, json=event(event_id="a1")).status_code == 202
        assert c.post(EVENT_URL, json=event(event_id="a1")).json()["duplicates"] == 1
        assert c.post(EVENT_URL, content=b"{nope").status_code == 400
        assert c.post(EVENT_URL, json={"event": "x"}).status_code == 422
        assert c.post(EVENT_URL, json={"event": "x"}).status_code == 422
        values = scrape(c)
    assert values[("metrics_events_accepted_total", ())] == 4
    assert values[("metrics_events_deduplicated_total", ())] == 1
    assert values[("metrics_events_sampled_out_total", ())] == 0
    rejected = "metrics_requests_rejected_total"
    assert values[(rejected, (("reason", "malformed"), ("status", "400")))] == 1
    assert values[(rejected, (("reason", "invalid"), ("status", "422")))] == 2
    assert values[("metrics_ring_size", ())] == 2
    assert values[("metrics_last_seq", ())] == 4
    assert values[("metrics_sink_bytes", ())] == config.jsonl.stat().st_size
    assert values[("metrics_sink_write_errors_total", ())] == 0
    assert values[("metrics_sink_healthy", ())] == 1
    assert values[("metrics_quarantine_size", ())] == 3
    assert values[("metrics_quarantine_write_errors_total", ())] == 0


def test_metrics_count_write_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl")
    with TestClient(create_app(config)) as c:
        full = types.ModuleType("os")
        full.__dict__.update(os.__dict__)

        def write(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        full.write = write  # type: ignore[attr-defined]
        with monkeypatch.context() as m:
            m.setattr(sink, "os", full)
            assert c.post(EVENT_URL, json=event()).status_code == 503
        values = scrape(c)
        assert values[("metrics_sink_write_errors_total", ())] == 1
        assert values[("metrics_sink_healthy", ())] == 0
        assert (
            values[
                (
                    "metrics_requests_rejected_total",
                    (("reason", "unavailable"), ("status", "503")),
                )
            ]
            == 1
        )
        assert c.post(EVENT_URL, json=event()).status_code == 202
        assert scrape(c)[("metrics_sink_healthy", ())] == 1


def test_fsync_seconds_grow_with_fsync_always(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", fsync="always")
    with TestClient(create_app(config)) as c:
        assert scrape(c)[("metrics_sink_fsync_seconds_total", ())] == 0
        assert c.post(EVENT_URL, json=event()).status_code == 202
        assert scrape(c)[("metrics_sink_fsync_seconds_total", ())] > 0


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    one = create_app(Config(jsonl=tmp_path / "a.jsonl"))
    two = create_app(Config(jsonl=tmp_path / "b.jsonl"))
    with TestClient(one) as a, TestClient(two) as b:
        assert a.post(EVENT_URL, json=event()).status_code == 202
        assert scrape(a)[("metrics_events_accepted_total", ())] == 1
        assert scrape(b)[("metrics_events_accepted_total", ())] == 0


def test_metrics_count_quarantine_write_errors(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", reject_jsonl=Path("/dev/full"))
    with TestClient(create_app(config)) as c:
        assert c.post(EVENT_URL, content=b"{nope").status_code == 400
        values = scrape(c)
    assert values[("metrics_quarantine_write_errors_total", ())] == 1
    assert values[("metrics_quarantine_size", ())] == 1
