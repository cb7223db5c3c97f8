"""Health and the ingest answers show the sink path as it was configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from metrics_service import Config, create_app


def test_a_relative_sink_path_is_shown_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with TestClient(create_app(Config(jsonl=Path("data/m.jsonl")))) as client:
        health = client.get("/api/metrics/behavior/health").json()
        single = client.post(
            "/api/metrics/event", json={"event": "x", "visitor_id": "visitor-1"}
        ).json()
        batch = client.post(
            "/api/metrics/events", json=[{"event": "x", "visitor_id": "visitor-1"}]
        ).json()
    assert health["sink_path"] == single["file"] == batch["file"] == "data/m.jsonl"
