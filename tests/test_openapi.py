from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from metrics_service.app import create_app, routes
from metrics_service.http.schemas import Snapshot
from metrics_service.ingest.contract import BehaviorEvent
from metrics_service.settings import Config


@pytest.fixture
def spec(tmp_path: Path) -> dict[str, Any]:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as client:
        response = client.get("/openapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        again = client.get("/openapi.json")
        assert again.content == response.content
        body: dict[str, Any] = response.json()
        return body


def test_document_validates_as_openapi_31(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def test_every_route_is_named(spec: dict[str, Any]) -> None:
    expected = {
        (method.lower(), route.path)
        for route in routes()
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    found = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert found == expected
    for path, ops in spec["paths"].items():
        for method, operation in ops.items():
            assert operation["summary"] != "", (method, path)
            assert operation["responses"], (method, path)


def test_schemas_come_from_the_models(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    event = BehaviorEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schemas["BehaviorEvent"]["properties"] == event["properties"]
    assert set(schemas["Snapshot"]["required"]) == set(
        Snapshot.model_json_schema()["required"]
    )
    ingest = spec["paths"]["/api/metrics/event"]["post"]
    assert ingest["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BehaviorEvent"
    }
    assert set(ingest["responses"]) >= {"202", "400", "401", "413", "415", "422", "503"}
    error = ingest["responses"]["422"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorBody"}


def test_query_endpoints_declare_params_and_statuses(spec: dict[str, Any]) -> None:
    wait = spec["paths"]["/api/metrics/behavior/wait"]["get"]
    names = {p["name"] for p in wait["parameters"]}
    assert names >= {"count", "timeout", "event", "visitor_id", "since", "after"}
    assert set(wait["responses"]) >= {"200", "408", "422"}
    series = spec["paths"]["/api/metrics/behavior/timeseries"]["get"]
    interval = next(p for p in series["parameters"] if p["name"] == "interval")
    assert interval["schema"]["enum"] == ["1s", "10s", "1m", "5m", "15m", "1h", "1d"]
    stream = spec["paths"]["/api/metrics/behavior/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    health = spec["paths"]["/api/metrics/behavior/health"]["get"]
    assert "401" not in health["responses"]


def test_the_settling_assertions_are_declared(spec: dict[str, Any]) -> None:
    wait = spec["paths"]["/api/metrics/behavior/wait"]["get"]
    names = {p["name"] for p in wait["parameters"]}
    assert names >= {"absent", "exactly", "settle", "sequence", "per", "rejected"}
    assert "409" in wait["responses"]


def test_every_filtering_read_describes_its_operators(spec: dict[str, Any]) -> None:
    filtering = [
        (path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if method == "get"
        and {"event", "visitor_id"} <= {p["name"] for p in op.get("parameters", ())}
    ]
    assert {path for path, _ in filtering} >= {
        "/api/metrics/behavior",
        "/api/metrics/behavior/rejected",
        "/api/metrics/behavior/wait",
        "/api/metrics/behavior/timeseries",
        "/api/metrics/behavior/stream",
    }
    for path, op in filtering:
        text = op["description"]
        for operator in ("__gte", "__in", "__prefix", "__exists"):
            assert operator in text, (path, operator)
        assert "unknown operators are rejected with 422" in text, path
        assert "422" in op["responses"], path
