"""Typed tracking plans (ingest/schema.py): the taxonomy's per-event JSON Schemas are
draft 2020-12, and a broken one stops the CLI with one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.cli import main

# Keywords draft 2020-12 has and earlier drafts read otherwise (or not at all).
SCHEMA = {
    "type": "object",
    "properties": {
        "pair": {
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "number"}],
            "items": False,
        }
    },
    "dependentRequired": {"coupon": ["discount"]},
    "unevaluatedProperties": False,
}


def taxonomy(tmp_path: Path, schema: Any) -> Path:
    path = tmp_path / "tax.json"
    path.write_bytes(
        orjson.dumps({"events": {"checkout_completed": {"schema": schema}}})
    )
    return path


@pytest.mark.parametrize(
    ("metadata", "found"),
    [
        ({"pair": ["a", 1]}, []),
        ({"pair": ["a", "b"]}, [("metadata.pair[1]", "type")]),
        ({"pair": ["a", 1, 2]}, [("metadata.pair", "items")]),
        (
            {"coupon": "x"},
            [("metadata", "dependentRequired"), ("metadata", "unevaluatedProperties")],
        ),
        ({"coupon": "x", "discount": 5}, [("metadata", "unevaluatedProperties")]),
    ],
)
def test_schemas_are_read_as_draft_2020_12(
    tmp_path: Path, metadata: dict[str, Any], found: list[tuple[str, str]]
) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", taxonomy=taxonomy(tmp_path, SCHEMA))
    sent = {"visitor_id": "visitor-1", "event": "checkout_completed"}
    with TestClient(create_app(config)) as c:
        r = c.post("/api/metrics/event", json={**sent, "metadata": metadata})
        assert r.status_code == (422 if found else 202)
        if found:
            detail = r.json()["detail"]
            assert [(d["path"], d["rule"]) for d in detail] == found
            [record] = c.get("/api/metrics/behavior/rejected").json()["rejections"]
            assert record["detail"] == detail


def test_a_broken_schema_stops_the_cli_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = {"type": "object", "properties": {"amount": {"minimum": "zero"}}}
    path = taxonomy(tmp_path, schema)
    monkeypatch.setenv("METRICS_TAXONOMY", str(path))
    code = main(["serve", "--jsonl", str(tmp_path / "m.jsonl"), "--port", "0"])
    assert code == 2
    assert capsys.readouterr().err == (
        f"metrics-service: error: METRICS_TAXONOMY: {path}: events.checkout_completed"
        ".schema.properties.amount.minimum: 'zero' is not of type 'number'\n"
    )
