"""Filter operators (`meta.amount__gte=10`, `visitor_id__prefix=v-`, ...) on every read
endpoint, and what they do with a missing key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from metrics_service.app import create_app
from metrics_service.read.query import flat_params
from metrics_service.settings import Config

SNAPSHOT = "/api/metrics/behavior"
WAIT = "/api/metrics/behavior/wait"
SERIES = "/api/metrics/behavior/timeseries"
STREAM = "/api/metrics/behavior/stream"

EVENTS = [
    ("page_view", "visitor-1", {"amount": 5, "path": "/docs/install"}),  # 1
    ("signup_start", "visitor-2", {"amount": "12", "plan": "team"}),  # 2
    ("page_view", "visitor-2", {"amount": "twelve", "plan": "pro"}),  # 3
    ("signup_done", "guest-33", {"amount": 20.5, "plan": None, "tags": ["shoe"]}),  # 4
    ("link_click", "visitor-1", {"amount": True, "user": {"tier": "gold"}}),  # 5
]


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as client:
        for name, visitor, metadata in EVENTS:
            body = {"event": name, "visitor_id": visitor, "metadata": metadata}
            response = client.post("/api/metrics/event", json=body)
            assert response.status_code == 202, response.text
        yield client


def seqs(client: TestClient, params: Any) -> list[int]:
    response = client.get(SNAPSHOT, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["last_events"])
    return sorted(e["seq"] for e in body["last_events"])


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # Numbers, and strings holding one; "twelve" and true never compare.
        ({"meta.amount__gte": "12"}, [2, 4]),
        ({"meta.amount__gt": "12"}, [4]),
        ({"meta.amount__lt": "12"}, [1]),
        ({"meta.amount__lte": "12"}, [1, 2]),
        ({"meta.amount__gt": "-1e3"}, [1, 2, 4]),
        ({"meta.amount__gte": "20.5"}, [4]),
        # A missing key matches __ne; null is a present value ("null").
        ({"meta.plan__ne": "pro"}, [1, 2, 4, 5]),
        ({"meta.plan__ne": "null"}, [1, 2, 3, 5]),
        ({"meta.plan__in": "pro,team"}, [2, 3]),
        ({"meta.path__prefix": "/docs"}, [1]),
        ({"meta.path__contains": "install"}, [1]),
        ({"meta.tags__contains": "shoe"}, [4]),  # an array's compact JSON
        ({"meta.plan__exists": "true"}, [2, 3, 4]),
        ({"meta.plan__exists": "false"}, [1, 5]),
        ({"meta.user.tier__in": "gold,silver"}, [5]),
        ({"meta.user.tier__exists": "false"}, [1, 2, 3, 4]),
        ({"meta.plan__eq": "pro"}, [3]),
        ({"visitor_id__prefix": "visitor-"}, [1, 2, 3, 5]),
        ({"visitor_id__ne": "visitor-1"}, [2, 3, 4]),
        ({"visitor_id__contains": "-3"}, [4]),
        ({"visitor_id__in": "guest-33,visitor-1"}, [1, 4, 5]),
        ({"event__in": "signup_start,signup_done"}, [2, 4]),
        ({"event__prefix": "signup_"}, [2, 4]),
        ({"event__ne": "page_view"}, [2, 4, 5]),
        ({"event_id__exists": "false"}, [1, 2, 3, 4, 5]),
        ({"event_id__exists": "true"}, []),
        # Combined with AND, with each other and with plain filters.
        ({"meta.amount__gt": "1", "meta.amount__lt": "15"}, [1, 2]),
        ({"event": "page_view", "meta.plan__exists": "true"}, [3]),
        ([("event", "page_view"), ("event__in", "page_view,link_click")], [1, 3]),
    ],
)
def test_each_operator(loaded: TestClient, params: Any, expected: list[int]) -> None:
    assert seqs(loaded, params) == expected


@pytest.mark.parametrize(
    ("params", "name", "says"),
    [
        ({"meta.amount__between": "1"}, "meta.amount__between", "'__between'"),
        ({"visitor_id__like": "v%"}, "visitor_id__like", "'__like'"),
        ({"meta.amount__gt": "ten"}, "meta.amount__gt", "expected a number"),
        ({"meta.amount__gt": "nan"}, "meta.amount__gt", "expected a number"),
        ({"meta.plan__exists": "yes"}, "meta.plan__exists", "true or false"),
        ([("meta.amount__gt", "1"), ("meta.amount__gt", "2")], "meta.amount__gt", ""),
        ({"since__gt": "2026-01-01"}, "since__gt", "unknown parameter"),
    ],
)
def test_bad_operators_are_422_naming_the_parameter(
    loaded: TestClient, params: Any, name: str, says: str
) -> None:
    response = loaded.get(SNAPSHOT, params=params)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["query", name]
    assert says in error["msg"]


def test_a_key_containing_double_underscores_is_matched_with_eq(
    tmp_path: Path,
) -> None:
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as client:
        metadata = {"__typename": "Cart", "a__b": 1}
        body = {"event": "x", "visitor_id": "visitor-1", "metadata": metadata}
        assert client.post("/api/metrics/event", json=body).status_code == 202
        assert seqs(client, {"meta.__typename": "Cart"}) == [1]
        assert seqs(client, {"meta.a__b__eq": "1"}) == [1]
        response = client.get(SNAPSHOT, params={"meta.a__b": "1"})
    assert response.status_code == 422
    assert "add '__eq'" in response.json()["detail"][0]["msg"]


def test_operators_on_wait_and_timeseries(loaded: TestClient) -> None:
    response = loaded.get(WAIT, params={"meta.amount__gte": "12", "count": 2})
    assert response.status_code == 200
    assert [e["seq"] for e in response.json()["events"]] == [2, 4]
    response = loaded.get(SERIES, params={"interval": "1d", "event__prefix": "signup"})
    assert response.status_code == 200
    [bucket] = response.json()["buckets"]
    assert bucket["by_event"] == {"signup_start": 1, "signup_done": 1}
    response = loaded.get(WAIT, params={"meta.amount__gte": "x", "timeout": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "meta.amount__gte"]


def test_operators_on_the_stream(loaded: TestClient) -> None:
    params = {"after": 0, "meta.amount__lt": "15", "visitor_id__prefix": "visitor-"}
    with loaded.stream("GET", STREAM, params=params) as response:
        assert response.status_code == 200
        ids = []
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids.append(int(line[4:]))
            if len(ids) == 2:
                break
    assert ids == [1, 2]


def test_a_waiter_with_an_operator_is_woken(loaded: TestClient) -> None:
    # Parked in the hub first, then released by the write that matches.
    got: list[Any] = []

    def wait() -> None:
        params = {"after": 5, "meta.amount__gt": "100", "timeout": 5}
        got.append(loaded.get(WAIT, params=params))

    waiter = threading.Thread(target=wait)
    waiter.start()
    hub = loaded.app.service.hub  # type: ignore[attr-defined]
    while hub.counts[0] == 0 and waiter.is_alive():
        threading.Event().wait(0.005)
    for amount in (99, "101"):
        body = {"event": "x", "visitor_id": "visitor-1", "metadata": {"amount": amount}}
        assert loaded.post("/api/metrics/event", json=body).status_code == 202
    waiter.join(5)
    [response] = got
    assert response.status_code == 200
    assert [e["metadata"]["amount"] for e in response.json()["events"]] == ["101"]


def test_flat_params_passes_operators_through() -> None:
    pairs = flat_params(
        {
            "visitor_id__prefix": "v-",
            "event__in": ["a", "b"],
            "meta": {
                "amount__gte": 10,
                "plan__in": ["pro", "team"],
                "ok__exists": True,
                "user": {"tier__ne": "gold"},
            },
        }
    )
    assert pairs == [
        ("visitor_id__prefix", "v-"),
        ("event__in", "a,b"),
        ("meta.amount__gte", "10"),
        ("meta.plan__in", "pro,team"),
        ("meta.ok__exists", "true"),
        ("meta.user.tier__ne", "gold"),
    ]


TAGGED = [
    # test_id, metadata: a metadata key named test_id is not the tag.
    ("tests/a.py::one", {}),  # 1
    (None, {"test_id": "tests/a.py::one"}),  # 2
    ("tests/a.py::two", {}),  # 3
    ("tests/b.py::one", {"test_id": "x"}),  # 4
]


@pytest.fixture
def tagged(tmp_path: Path) -> Iterator[TestClient]:
    # A chunk of 2, so the ring serves the filter from packed chunks and its deque.
    with TestClient(create_app(Config(jsonl=tmp_path / "m.jsonl"))) as client:
        ring = client.app.service.ring  # type: ignore[attr-defined]
        ring._chunk = 2
        for tag, metadata in TAGGED:
            body = {"event": "e", "visitor_id": "visitor-1", "metadata": metadata}
            headers = {} if tag is None else {"X-Metrics-Test-Id": tag}
            response = client.post("/api/metrics/event", json=body, headers=headers)
            assert response.status_code == 202, response.text
        yield client


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"test_id": "tests/a.py::one"}, [1]),
        ({"test_id": "tests/a.py::"}, []),
        ({"test_id": "nothing"}, []),
        ({"test_id": "x"}, []),
        ({"test_id": "tests/b.py::one", "event": "e"}, [4]),
        ({"test_id__prefix": "tests/a.py::"}, [1, 3]),
        ({"test_id__in": "tests/a.py::two,tests/b.py::one"}, [3, 4]),
        ({"test_id__exists": "false"}, [2]),
        ({"test_id__ne": "tests/a.py::one"}, [2, 3, 4]),
        ({"test_id__contains": "::one"}, [1, 4]),
    ],
)
def test_test_id_filter(tagged: TestClient, params: Any, expected: list[int]) -> None:
    assert seqs(tagged, params) == expected


def test_test_id_on_wait_timeseries_and_the_stream(tagged: TestClient) -> None:
    params = {"test_id": "tests/a.py::two", "count": 1, "timeout": 0}
    response = tagged.get(WAIT, params=params)
    assert response.status_code == 200
    assert [e["seq"] for e in response.json()["events"]] == [3]
    response = tagged.get(
        SERIES, params={"interval": "1d", "test_id": "tests/a.py::one"}
    )
    assert response.status_code == 200
    [bucket] = response.json()["buckets"]
    assert bucket["by_event"] == {"e": 1}
    params = {"after": 0, "test_id": "tests/b.py::one"}
    with tagged.stream("GET", STREAM, params=params) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("id: "):
                ids = [int(line[4:])]
                break
    assert ids == [4]


def test_a_waiter_for_a_test_id_is_woken_by_its_event_only(tagged: TestClient) -> None:
    got: list[Any] = []

    def wait() -> None:
        params = {"after": 4, "test_id": "late", "timeout": 5}
        got.append(tagged.get(WAIT, params=params))

    waiter = threading.Thread(target=wait)
    waiter.start()
    hub = tagged.app.service.hub  # type: ignore[attr-defined]
    while hub.counts[0] == 0 and waiter.is_alive():
        threading.Event().wait(0.005)
    body = {"event": "x", "visitor_id": "visitor-1", "metadata": {"test_id": "late"}}
    for headers in ({"X-Metrics-Test-Id": "early"}, {}, {"X-Metrics-Test-Id": "late"}):
        response = tagged.post("/api/metrics/event", json=body, headers=headers)
        assert response.status_code == 202
    waiter.join(5)
    [response] = got
    assert response.status_code == 200
    assert [e["seq"] for e in response.json()["events"]] == [7]
