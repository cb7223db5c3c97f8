"""Real answers of a running service, validated against its own GET /openapi.json, and
README's table of answers ("Every answer") against the same schemas."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from metrics_service.ingest.formats.segment import CALLS
from metrics_service.testing import MetricsServer

README = Path(__file__).resolve().parents[1] / "README.md"
API = "/api/metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    folder = tmp_path_factory.mktemp("responses")
    with MetricsServer(folder / "m.jsonl") as running:
        yield running


def _schema(spec: dict[str, Any], method: str, path: str, status: int) -> Any:
    answer = spec["paths"][path][method]["responses"][str(status)]
    return answer["content"]["application/json"]["schema"]


def _validator(spec: dict[str, Any], schema: Any) -> Draft202012Validator:
    return Draft202012Validator({**schema, "components": spec["components"]})


def test_every_json_answer_matches_the_openapi_schema(server: MetricsServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        _check_answers(http)


def _check_answers(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    old = {
        "visitor_id": "visitor-1",
        "event": "old",
        "timestamp": "1970-01-02T00:00:00Z",
    }
    segment_call = {"type": "track", "event": "s", "userId": "user-12"}
    calls: list[tuple[str, str, dict[str, Any], int]] = [
        (
            "post",
            f"{API}/event",
            {"json": {"visitor_id": "visitor-1", "event": "a"}},
            202,
        ),
        (
            "post",
            f"{API}/event",
            {"json": {"visitor_id": "visitor-9", "event": "b"}},
            202,
        ),
        ("post", f"{API}/event", {"json": {**old, "event_id": "e-1"}}, 202),
        ("post", f"{API}/event", {"json": {**old, "event_id": "e-1"}}, 202),  # dup
        ("post", f"{API}/event", {"json": {"event": "x"}}, 422),
        ("post", f"{API}/event", {"content": b"{", "headers": _json_type()}, 400),
        ("post", f"{API}/event", {"content": b"x", "headers": _type("image/png")}, 415),
        (
            "post",
            f"{API}/events",
            {"json": [{"visitor_id": "visitor-2", "event": "c"}]},
            202,
        ),
        ("post", f"{API}/events", {"json": []}, 422),
        ("get", f"{API}/behavior", {}, 200),
        ("get", f"{API}/behavior", {"params": {"event": "a", "limit": 1}}, 200),
        ("get", f"{API}/behavior", {"params": {"limit": "x"}}, 422),
        ("get", f"{API}/behavior/health", {}, 200),
        ("get", f"{API}/behavior/wait", {"params": {"event": "a"}}, 200),
        (
            "get",
            f"{API}/behavior/wait",
            {"params": {"event": "z", "timeout": 0.1}},
            408,
        ),
        ("get", f"{API}/behavior/wait", {"params": {"nope": 1}}, 422),
        ("get", f"{API}/behavior/timeseries", {"params": {"interval": "1d"}}, 200),
        ("get", f"{API}/behavior/timeseries", {"params": {"interval": "1s"}}, 200),
        ("get", f"{API}/behavior/timeseries", {"params": {"interval": "2m"}}, 422),
        ("get", "/static/nope.txt", {}, 404),
        ("get", f"{API}/behavior/rejected", {"params": {"status": 422}}, 200),
        ("get", f"{API}/behavior/wait", {"params": {"rejected": "true"}}, 200),
        ("delete", f"{API}/behavior/rejected", {}, 200),
        ("delete", f"{API}/behavior", {}, 200),
        # The SDK formats (ingest/formats), after the ring's figures above.
        ("get", "/segment/v1/projects/wk_1/settings", {}, 200),
        *[
            (
                "post",
                f"/segment/v1/{call}",
                {"json": {"event": "s", "userId": "user-12"}},
                200,
            )
            for call in CALLS  # every short and HTTP API path
        ],
        *[
            ("post", f"/segment/v1/{b}", {"json": {"batch": [segment_call]}}, 200)
            for b in ("b", "batch")
        ],
        *[
            (
                "post",
                f"/posthog/{p}",
                {"json": {"event": "p", "distinct_id": "user-12"}},
                200,
            )
            for p in ("e/", "i/v0/e/", "batch/", "capture/")
        ],
        ("get", "/posthog/array/phc_1/config", {}, 200),
        ("post", "/posthog/flags/", {}, 200),
        ("post", "/posthog/decide/", {}, 200),
        ("post", "/ga4/debug/mp/collect", {"json": {"events": []}}, 200),
    ]
    templates = {
        "/segment/v1/projects/wk_1/settings": "/segment/v1/projects/{writeKey}/settings",
        "/posthog/array/phc_1/config": "/posthog/array/{token}/config",
    }
    checked: set[tuple[str, str, int]] = set()
    bodies: dict[tuple[str, str, int], list[Any]] = {}
    for method, path, kwargs, status in calls:
        answer = http.request(method.upper(), path, **kwargs)
        assert answer.status_code == status, (method, path, answer.text)
        template = "/static/{name}" if path.startswith("/static/") else path
        template = templates.get(path, template)
        body = answer.json()
        errors = list(
            _validator(spec, _schema(spec, method, template, status)).iter_errors(body)
        )
        assert not errors, (method, path, status, body, [e.message for e in errors])
        checked.add((method, template, status))
        bodies.setdefault((method, template, status), []).append(body)
    # Every documented JSON success was called.
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith("2") and "application/json" in answer.get(
                    "content", {}
                ):
                    if path == "/openapi.json":
                        continue
                    assert (method, path, int(status)) in checked, (method, path)
    # The answers README documents in words.
    single = bodies[("post", f"{API}/event", 202)]
    assert single[2]["seq"] is not None and single[3]["seq"] is None
    assert single[3]["duplicates"] == 1 and single[3]["stored"] == 0
    snapshot = bodies[("get", f"{API}/behavior", 200)][0]
    assert isinstance(snapshot["by_event"], list)
    assert snapshot["capacity"] == 500 and snapshot["evicted"] == 0
    assert snapshot["last_seq"] == 4
    [stored] = [e for e in snapshot["last_events"] if "event_id" in e]
    assert list(stored)[4:7] == ["visitor_id", "event_id", "metadata"]
    daily, seconds = bodies[("get", f"{API}/behavior/timeseries", 200)]
    assert isinstance(daily["buckets"][0]["by_event"], dict)
    # 1970 is more than 10,000 days (and seconds) before the other events.
    assert daily["clipped"] == seconds["clipped"] == 1


def _json_type() -> dict[str, str]:
    return _type("application/json")


def _type(value: str) -> dict[str, str]:
    return {"Content-Type": value}


def _readme_rows() -> list[tuple[str, str, list[str], list[str]]]:
    text = README.read_text()
    table = text[text.index("### Every answer") :].split("\n\n")[1]
    rows = []
    for line in table.splitlines()[2:]:
        request, statuses, body = (cell.strip() for cell in line.strip("|").split("|"))
        fields = re.findall(r"`([a-z_]+(?:\[\]\.[a-z_]+)?)`", body)
        rows.append((request, statuses, re.findall(r"\d{3}", statuses), fields))
    return rows


def test_readme_answers_table_names_every_field(server: MetricsServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def resolve(schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    rows = _readme_rows()
    assert len(rows) >= 8
    for request, _, statuses, fields in rows:
        if request == "any error":
            schema = schemas["ErrorBody"]
        else:
            method, path = request.strip("`").split()
            schema = resolve(_schema(spec, method.lower(), path, int(statuses[0])))
        top = [f for f in fields if "[]" not in f]
        assert set(top) == set(schema["properties"]), request
        for nested in (f for f in fields if "[]" in f):
            outer, inner = nested.split("[].")
            items = resolve(schema["properties"][outer])
            inner_schema = resolve(items.get("items", items))
            assert inner in inner_schema["properties"], (request, nested)
