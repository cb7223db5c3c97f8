"""The per-test tag: its carriers, its checks, and where the stored line keeps it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service.http.errors import ApiError
from metrics_service.ingest import test_tag

BATCH_URL = "/api/metrics/events"


def scope(*headers: tuple[str, str], query: bytes = b"") -> dict[str, Any]:
    return {
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "query_string": query,
    }


def test_absent_without_any_carrier() -> None:
    assert test_tag.test_id(scope(("cookie", "a=b"), query=b"x=1")) is None
    assert test_tag.test_id({"headers": []}) is None


def test_each_carrier_alone() -> None:
    assert test_tag.test_id(scope((test_tag.HEADER, "tests/a.py::t[1]"))) == (
        "tests/a.py::t[1]"
    )
    assert test_tag.test_id(scope(query=b"a=1&test_id=tests%2Fa.py%3A%3At+x")) == (
        "tests/a.py::t x"
    )
    cookie = ("Cookie", "a=1; metrics_test_id=tests%2Fa.py%3A%3At%20x; b=2")
    assert test_tag.test_id(scope(cookie)) == "tests/a.py::t x"
    assert test_tag.test_id(scope(("cookie", 'metrics_test_id="q"'))) == "q"


def test_the_header_wins_then_the_query_then_the_cookie() -> None:
    header = (test_tag.HEADER, "from-header")
    cookie = ("cookie", "metrics_test_id=from-cookie")
    query = b"test_id=from-query"
    assert test_tag.test_id(scope(cookie, header, query=query)) == "from-header"
    assert test_tag.test_id(scope(cookie, query=query)) == "from-query"
    assert test_tag.test_id(scope(cookie, query=b"x=test_id")) == "from-cookie"


@pytest.mark.parametrize(
    ("request_scope", "message"),
    [
        (scope((test_tag.HEADER, "")), "X-Metrics-Test-Id header: is empty"),
        (scope((test_tag.HEADER, "t" * 257)), "X-Metrics-Test-Id header: is 257"),
        (scope(query=b"test_id="), "test_id query parameter: is empty"),
        (scope(query=b"test_id=a%00b"), "test_id query parameter: must not contain"),
        (scope(query=b"test_id=a&test_id=b"), "test_id query parameter: given more"),
        (scope(("cookie", "metrics_test_id=a%E2%80%8Bb")), "metrics_test_id cookie:"),
        (
            {"headers": [(b"x-metrics-test-id", b"\xff")]},
            "X-Metrics-Test-Id header: not valid UTF-8",
        ),
        (
            scope((test_tag.HEADER, "a"), (test_tag.HEADER, "b")),
            "X-Metrics-Test-Id header: given more than once",
        ),
    ],
)
def test_a_bad_value_is_422_naming_its_carrier(
    request_scope: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as raised:
        test_tag.test_id(request_scope)
    assert raised.value.status_code == 422
    assert str(raised.value.detail).startswith(message)


def test_256_characters_are_kept() -> None:
    assert test_tag.test_id(scope((test_tag.HEADER, "t" * 256))) == "t" * 256


def test_every_event_of_the_request_is_stored_with_it_after_event_id(
    client: TestClient, tmp_path: Path
) -> None:
    headers = {test_tag.HEADER: "tests/test_a.py::test_b"}
    one = event("a", event_id="e-1", metadata={"test_id": "spoof"})
    r = client.post(EVENT_URL, json=one, headers=headers)
    assert r.status_code == 202
    r = client.post(BATCH_URL + "?test_id=q", json=[event("b"), event("c")])
    assert r.status_code == 202
    lines = (tmp_path / "m.jsonl").read_bytes().splitlines()
    keys = [list(orjson.loads(line)) for line in lines]
    assert keys[0][5:8] == ["event_id", "test_id", "metadata"]
    assert keys[1][4:7] == ["visitor_id", "test_id", "metadata"]
    stored = read_lines(tmp_path / "m.jsonl")
    assert [line["test_id"] for line in stored] == ["tests/test_a.py::test_b", "q", "q"]
    assert stored[0]["metadata"] == {"test_id": "spoof"}


def test_without_a_carrier_the_line_is_as_before(
    client: TestClient, tmp_path: Path
) -> None:
    r = client.post(
        EVENT_URL, json=event("a", event_id="e"), headers={"user-agent": "u"}
    )
    assert r.status_code == 202
    line = orjson.loads((tmp_path / "m.jsonl").read_bytes())
    assert list(line) == [
        "seq",
        "received_at",
        "timestamp",
        "event",
        "visitor_id",
        "event_id",
        "metadata",
        "user_agent",
    ]


def test_a_value_json_escapes_is_stored_escaped(
    client: TestClient, tmp_path: Path
) -> None:
    tag = 'a "quoted" \\ tag é'
    r = client.post(
        EVENT_URL, json=event("a"), headers=[(b"x-metrics-test-id", tag.encode())]
    )
    assert r.status_code == 202
    assert read_lines(tmp_path / "m.jsonl")[0]["test_id"] == tag
    r = client.get(SNAPSHOT_URL, params={"test_id": tag})
    assert r.status_code == 200
    assert [e["test_id"] for e in r.json()["last_events"]] == [tag]


def test_a_test_id_in_the_body_is_refused_on_both_paths(
    client: TestClient, tmp_path: Path
) -> None:
    for body in (
        event("a", test_id="x"),
        event("a", test_id="x", timestamp="2020-01-01"),
    ):
        r = client.post(EVENT_URL, json=body)
        assert r.status_code == 422
        (problem,) = r.json()["detail"]
        assert problem["loc"] == ["test_id"]
        assert "X-Metrics-Test-Id header" in problem["msg"]
    r = client.post(BATCH_URL, json=[event("a"), event("b", test_id="x")])
    assert r.status_code == 422
    assert r.json()["detail"][0]["index"] == 1
    assert (
        not (tmp_path / "m.jsonl").exists() or not (tmp_path / "m.jsonl").read_bytes()
    )


def test_a_bad_carrier_stores_nothing(client: TestClient, tmp_path: Path) -> None:
    r = client.post(EVENT_URL + "?test_id=", json=event("a"))
    assert r.status_code == 422
    assert r.json() == {
        "detail": "test_id query parameter: is empty; send 1 to 256 characters"
    }
    assert (
        not (tmp_path / "m.jsonl").exists() or not (tmp_path / "m.jsonl").read_bytes()
    )


def test_the_full_path_stamps_it_too(client: TestClient, tmp_path: Path) -> None:
    ndjson = (
        orjson.dumps(event("a"))
        + b"\n"
        + orjson.dumps(event("b", sent_at="2020-01-01"))
    )
    client.cookies.set(test_tag.COOKIE, "tests%2Fc.py%3A%3At")
    r = client.post(
        BATCH_URL, content=ndjson, headers={"content-type": "application/x-ndjson"}
    )
    assert r.status_code == 202
    assert [line["test_id"] for line in read_lines(tmp_path / "m.jsonl")] == [
        "tests/c.py::t",
        "tests/c.py::t",
    ]
