from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from metrics_service import Config, create_app

EVENT_URL = "/api/metrics/event"
SNAPSHOT_URL = "/api/metrics/behavior"
HEALTH_URL = "/api/metrics/behavior/health"


def event(name: str = "page_view", **fields: Any) -> dict[str, Any]:
    """A valid event body; keyword arguments add or replace fields."""
    return {"visitor_id": "visitor-123", "event": name, **fields}


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed; fails on a line without its newline."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config(jsonl=tmp_path / "m.jsonl")


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    with TestClient(create_app(config)) as c:
        yield c
