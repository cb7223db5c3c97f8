"""Segment's wire format (/segment): recorded bodies as analytics-next, RudderStack's
JS SDK and analytics-python send them, through the app."""

from __future__ import annotations

import base64
import datetime as dt
import errno
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import SNAPSHOT_URL, read_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from test_faults import patch_os, raising

from metrics_service import Config, create_app
from metrics_service.http.errors import ApiError
from metrics_service.ingest.formats import segment

ANON = "5c1e3a7e-9d41-4b8e-a0f2-1f6e2d3c4b5a"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/131.0"


def basic(write_key: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    }


def iso(moment: dt.datetime) -> str:
    return (
        moment.astimezone(dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# analytics-next 1.84's track call to /v1/t, as recorded (text/plain, Basic auth).
def next_track(**fields: Any) -> dict[str, Any]:
    return {
        "timestamp": "2026-12-03T12:00:00.000Z",
        "integrations": {},
        "type": "track",
        "event": "Signed Up",
        "properties": {"plan": "pro", "seats": 3},
        "context": {
            "page": {
                "path": "/pricing",
                "referrer": "http://127.0.0.1:5001/",
                "search": "",
                "title": "Pricing",
                "url": "http://127.0.0.1:5001/pricing",
            },
            "userAgent": UA,
            "locale": "en-US",
            "library": {"name": "analytics.js", "version": "npm:next-1.84.0"},
            "timezone": "UTC",
        },
        "messageId": "ajs-next-1764763200000-0f3c2a1b-aaaa-bbbb-cccc-000000000001",
        "anonymousId": ANON,
        "writeKey": "wk_test",
        "userId": None,
        "sentAt": "2026-12-03T12:00:00.005Z",
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
        **fields,
    }


def post(client: TestClient, path: str, body: Any, **headers: str) -> Any:
    return client.post(
        f"/segment/v1/{path}",
        content=orjson.dumps(body),
        headers={"Content-Type": "text/plain", **basic("wk_test"), **headers},
    )


def test_an_analytics_next_track_is_stored_with_the_mapping(
    client: TestClient, config: Config
) -> None:
    sent = dt.datetime.now(dt.UTC)
    body = next_track(timestamp=iso(sent - dt.timedelta(seconds=5)), sentAt=iso(sent))
    r = post(client, "t", body)
    assert r.status_code == 200
    assert r.json() == {"success": True, "stored": 1, "duplicates": 0, "sampled_out": 0}
    (line,) = read_lines(config.jsonl)
    assert line["event"] == "Signed Up"
    assert line["visitor_id"] == ANON
    assert line["event_id"] == body["messageId"]
    assert line["user_agent"] == UA
    assert line["metadata"] == {
        "plan": "pro",
        "seats": 3,
        "$sdk": {
            "format": "segment",
            "type": "track",
            "url": "http://127.0.0.1:5001/pricing",
            "path": "/pricing",
            "title": "Pricing",
            "referrer": "http://127.0.0.1:5001/",
            "library": "analytics.js",
            "library_version": "npm:next-1.84.0",
        },
    }
    # Clock skew: the event happened 5 s before the SDK sent it, by the SDK's clock.
    received = parse(line["received_at"])
    assert parse(line["timestamp"]) == received - dt.timedelta(seconds=5)


def test_each_short_path_is_its_call(client: TestClient, config: Config) -> None:
    base = {"anonymousId": ANON, "userId": "user-42", "context": {}}
    calls = {
        "p": {"type": "page", "name": "Home", "properties": {"path": "/"}},
        "s": {"type": "screen", "name": "Cart", "properties": {"items": 2}},
        "i": {"type": "identify", "traits": {"plan": "pro"}},
        "g": {"type": "group", "groupId": "org-7", "traits": {"size": 10}},
        "a": {"type": "alias", "previousId": "old-visitor"},
    }
    for path, call in calls.items():
        r = post(client, path, {**base, **call})
        assert r.status_code == 200, r.text
    lines = read_lines(config.jsonl)
    assert [line["event"] for line in lines] == [
        "page",
        "screen",
        "identify",
        "group",
        "alias",
    ]
    assert {line["visitor_id"] for line in lines} == {ANON}
    page, screen, identify, group, alias = (line["metadata"] for line in lines)
    assert page["path"] == "/"
    assert page["$sdk"] == {
        "format": "segment",
        "type": "page",
        "user_id": "user-42",
        "name": "Home",
    }
    assert screen["items"] == 2
    assert identify["plan"] == "pro"
    assert group["size"] == 10
    assert group["$sdk"]["group_id"] == "org-7"
    assert alias == {
        "$sdk": {
            "format": "segment",
            "type": "alias",
            "user_id": "user-42",
            "previous_id": "old-visitor",
        }
    }


def test_the_http_api_paths_and_rudderstack_json(
    client: TestClient, config: Config
) -> None:
    # RudderStack's JS SDK: application/json;charset=UTF-8, its time in
    # originalTimestamp, an identify's traits only in context.traits.
    identify = {
        "type": "identify",
        "anonymousId": ANON,
        "userId": "user-42",
        "messageId": "rs-1",
        "originalTimestamp": "2026-12-03T12:00:00.000Z",
        "sentAt": "2026-12-03T12:00:00.000Z",
        "context": {
            "traits": {"email": "ada@example.com"},
            "library": {"name": "RudderLabs JavaScript SDK", "version": "3.11.0"},
        },
    }
    r = client.post(
        "/segment/v1/identify",
        content=orjson.dumps(identify),
        headers={
            "Content-Type": "application/json;charset=UTF-8",
            "AnonymousId": base64.b64encode(ANON.encode()).decode(),
            "SentAt": "2026-12-03T12:00:00.000Z",
            **basic("wk_test"),
        },
    )
    assert r.status_code == 200, r.text
    r = post(client, "track", {"event": "Paid", "userId": "user-42"})
    assert r.status_code == 200, r.text
    first, second = read_lines(config.jsonl)
    assert first["event"] == "identify"
    assert first["metadata"]["email"] == "ada@example.com"
    assert first["metadata"]["$sdk"]["library"] == "RudderLabs JavaScript SDK"
    assert parse(first["timestamp"]) <= parse(first["received_at"])
    assert second["event"] == "Paid"
    assert second["visitor_id"] == "user-42"  # no anonymousId: the userId


def test_a_batch_applies_its_sent_at_and_is_stored_in_one_piece(
    client: TestClient, config: Config
) -> None:
    sent = dt.datetime.now(dt.UTC)
    body = {
        "batch": [
            {
                **next_track(messageId=f"m-{i}"),
                "timestamp": iso(sent - dt.timedelta(seconds=i)),
            }
            for i in range(1, 4)
        ],
        "sentAt": iso(sent),
        "writeKey": "wk_test",
    }
    for item in body["batch"]:
        del item["sentAt"]
    r = post(client, "b", body)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 3
    lines = read_lines(config.jsonl)
    for i, line in enumerate(lines, 1):
        received = parse(line["received_at"])
        assert parse(line["timestamp"]) == received - dt.timedelta(seconds=i)


def test_a_batch_is_refused_whole_naming_the_foreign_fields(
    client: TestClient, config: Config
) -> None:
    body = {
        "batch": [
            next_track(messageId="ok-1"),
            next_track(anonymousId="abc", messageId="m-2"),
            {"type": "track", "properties": {}},
            {"type": "flush", "anonymousId": ANON},
            "not a call",
        ],
    }
    r = post(client, "batch", body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    by_index = {(p["index"], tuple(p["loc"])): p["msg"] for p in detail}
    assert "6 characters" in by_index[(1, ("anonymousId",))]
    assert by_index[(2, ("anonymousId",))] == (
        "no anonymousId or userId: one of them is the visitor id"
    )
    assert by_index[(2, ("event",))] == "a track call needs its event name"
    assert "flush" in by_index[(3, ("type",))]
    assert by_index[(4, ())] == "expected a JSON object, got a string"
    assert not config.jsonl.exists() or read_lines(config.jsonl) == []
    r = post(client, "b", {"batch": {"type": "track"}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["batch"]
    r = post(client, "b", {"batch": []})
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]


def test_a_retried_message_id_is_stored_once(
    client: TestClient, config: Config
) -> None:
    body = next_track()
    assert post(client, "t", body).json()["stored"] == 1
    again = post(client, "t", body, **{"X-Retry-Count": "1"})
    assert again.status_code == 200
    assert again.json()["duplicates"] == 1
    assert len(read_lines(config.jsonl)) == 1


def test_an_event_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", max_event_bytes=600)
    with TestClient(create_app(config)) as c:
        r = post(c, "t", next_track(properties={"blob": "x" * 600}))
    assert r.status_code == 422
    assert "the limit is 600 bytes" in r.json()["detail"][0]["msg"]


def test_taxonomy_and_redaction_apply_also_inside_sdk(tmp_path: Path) -> None:
    config = Config(
        jsonl=tmp_path / "m.jsonl",
        allowed_events=frozenset({"Signed Up"}),
        redact_keys=frozenset({"seats", "url"}),
    )
    with TestClient(create_app(config)) as c:
        r = post(c, "t", next_track(event="Other"))
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["event"]
        assert "allowed: Signed Up" in r.json()["detail"][0]["msg"]
        assert post(c, "t", next_track()).status_code == 200
    (line,) = read_lines(config.jsonl)
    assert line["metadata"]["seats"] == "[redacted]"
    assert line["metadata"]["$sdk"]["url"] == "[redacted]"
    assert line["metadata"]["$sdk"]["path"] == "/pricing"


def test_the_settings_document_points_back_here(client: TestClient) -> None:
    r = client.get("/segment/v1/projects/wk_test/settings", headers={"Host": "h:9"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    io = r.json()["integrations"]["Segment.io"]
    assert io["apiKey"] == "wk_test"
    assert io["apiHost"] == "h:9/segment/v1"
    assert io["protocol"] == "http"
    assert r.json()["metrics"]["sampleRate"] == 0


def test_the_write_key_is_checked_against_the_ingest_token(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ingest_token="wk-secret-1")
    body = next_track()
    del body["writeKey"]
    with TestClient(create_app(config)) as c:
        r = c.post("/segment/v1/t", content=orjson.dumps(body))
        assert r.status_code == 401
        assert "writeKey" in r.json()["detail"]
        r = c.post("/segment/v1/t", content=orjson.dumps(body), headers=basic("nope"))
        assert r.status_code == 401
        assert "not valid" in r.json()["detail"]
        assert "wk-secret-1" not in r.text
        wrong_in_body = {**body, "writeKey": "nope"}
        r = c.post(
            "/segment/v1/t",
            content=orjson.dumps(wrong_in_body),
            headers=basic("wk-secret-1"),
        )
        assert r.status_code == 401
        r = c.post(
            "/segment/v1/t", content=orjson.dumps(body), headers=basic("wk-secret-1")
        )
        assert r.status_code == 200
        r = c.post(
            "/segment/v1/t",
            content=orjson.dumps(
                {**body, "messageId": "m-2", "writeKey": "wk-secret-1"}
            ),
        )
        assert r.status_code == 200
        r = c.post(
            "/segment/v1/t",
            content=orjson.dumps({**body, "messageId": "m-3"}),
            headers={"Authorization": "Bearer wk-secret-1"},
        )
        assert r.status_code == 200
        # The settings document stays open: analytics.js fetches it without a key.
        assert c.get("/segment/v1/projects/x/settings").status_code == 200
    assert len(read_lines(config.jsonl)) == 3


def test_cors_preflight_allows_the_sdk_headers(client: TestClient) -> None:
    r = client.options(
        "/segment/v1/t",
        headers={
            "Origin": "http://127.0.0.1:5001",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,"
            "x-retry-count,anonymousid,sentat",
        },
    )
    assert r.status_code == 200
    allowed = r.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "x-retry-count", "anonymousid", "sentat"):
        assert header in allowed
    r = post(client, "t", next_track(), Origin="http://127.0.0.1:5001")
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"


def test_a_failing_sink_answers_503_so_the_sdk_retries(
    client: TestClient, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        patch_os(m, write=raising(OSError(errno.EIO, "I/O error")))
        r = post(client, "t", next_track())
    assert r.status_code == 503
    assert post(client, "t", next_track()).status_code == 200
    assert client.get(SNAPSHOT_URL).json()["total"] == 1


def test_the_test_tag_is_stamped_as_on_our_own_events(
    client: TestClient, config: Config
) -> None:
    r = post(client, "t", next_track(), **{"X-Metrics-Test-Id": "checkout spec"})
    assert r.status_code == 200
    (line,) = read_lines(config.jsonl)
    assert line["test_id"] == "checkout spec"
    assert "test_id" not in line["metadata"]


FIXTURES = Path(__file__).with_name("fixtures") / "sdk"


def replay(client: TestClient, fixture: str) -> list[tuple[str, int, Any]]:
    """Every request a real SDK made (tests/fixtures/sdk, recorded by e2e/test_sdks.py's
    recorder), sent again: (method and path, status, JSON answer or None)."""
    recording = orjson.loads((FIXTURES / f"{fixture}.json").read_bytes())
    answers = []
    for request in recording["requests"]:
        headers = {
            name: value.replace("DEMO", "127.0.0.1:5001").replace(
                "COLLECTOR", "testserver"
            )
            for name, value in request["headers"].items()
            if name not in ("host", "content-length")
        }
        if "body_base64" in request:
            body = base64.b64decode(request["body_base64"])
        else:
            body = request.get("body", "").encode()
        url = request["path"] + (f"?{request['query']}" if request["query"] else "")
        r = client.request(request["method"], url, content=body, headers=headers)
        kind = r.headers.get("content-type", "")
        answer = r.json() if kind.startswith("application/json") else None
        answers.append(
            (f"{request['method']} {request['path']}", r.status_code, answer)
        )
    return answers


@pytest.mark.parametrize(
    "fixture", ["segment_analytics_next", "segment_analytics_next_batching"]
)
def test_analytics_next_recordings_replay(
    client: TestClient, config: Config, fixture: str
) -> None:
    answers = replay(client, fixture)
    assert [a for a in answers if a[1] != 200] == []
    posts = [a for a in answers if a[0].startswith("POST")]
    lines = read_lines(config.jsonl)
    ids = [line["event_id"] for line in lines]
    assert len(ids) == len(set(ids))  # resent messageIds stored once
    assert sum(a[2]["stored"] for a in posts) == len(lines)
    assert sum(a[2]["duplicates"] for a in posts) > 0  # the page's resends
    assert {line["metadata"]["$sdk"]["library"] for line in lines} == {"analytics.js"}
    track = next(line for line in lines if line["event"] == "Order Completed")
    assert track["metadata"]["plan"] == "pro"
    assert track["metadata"]["$sdk"]["url"] == "http://DEMO/seg.html"
    assert all(line["user_agent"].startswith("Mozilla/5.0") for line in lines)


def test_the_rudderstack_recording_replays(client: TestClient, config: Config) -> None:
    answers = replay(client, "rudderstack_analytics_js")
    assert [a for a in answers if a[1] != 200] == []
    lines = read_lines(config.jsonl)
    assert len(lines) == sum(1 for a in answers if a[0].startswith("POST"))
    page, track, identify = lines[:3]
    assert page["event"] == "page"
    assert track["metadata"]["$sdk"]["library"] == "RudderLabs JavaScript SDK"
    assert "user_id" not in page["metadata"]["$sdk"]  # "" before identify is absent
    assert identify["event"] == "identify"
    assert identify["metadata"]["email"] == "a@b.c"  # from context.traits
    assert identify["metadata"]["$sdk"]["user_id"] == "user-42"
    assert identify["visitor_id"] == page["visitor_id"]  # the anonymousId throughout


# Values of any JSON type, and the ones the SDKs send, for every field the mapping reads.
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "track", "page", "identify", "alias", "x", ANON]),
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)
_fields = [
    "type", "event", "anonymousId", "userId", "messageId", "timestamp",
    "originalTimestamp", "sentAt", "properties", "traits", "name", "groupId",
    "previousId", "writeKey", "integrations",
]  # fmt: skip
_context = st.fixed_dictionaries(
    {},
    optional={
        "page": _values
        | st.fixed_dictionaries({}, optional={"url": _values, "title": _values}),
        "library": _values
        | st.fixed_dictionaries({}, optional={"name": _values, "version": _values}),
        "userAgent": _values,
        "traits": _values,
    },
)
_calls = st.fixed_dictionaries(
    {}, optional={**{name: _values for name in _fields}, "context": _context | _values}
)
_batches = st.fixed_dictionaries(
    {"batch": st.lists(_calls | _values, max_size=4) | _values},
    optional={"sentAt": _values, "writeKey": _values},
)


def _mapped(read: Any, body: bytes, call: str | None) -> Any:
    try:
        if call is not None:
            messages, sent_at, key = [read(body)], None, None
        else:
            messages, sent_at, key = read(body)
    except ApiError as exc:
        return exc.status_code, exc.detail
    items = [segment._map(m, call, sent_at) for m in messages]
    return [(i.event, i.where, list(i.problems)) for i in items], sent_at, key


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_batches)
def test_msgspec_reads_a_batch_as_parse_json_reads_it(batch: dict[str, Any]) -> None:
    body = orjson.dumps(batch)
    fast = _mapped(segment.read_batch, body, None)
    assert fast == _mapped(segment.read_batch_loosely, body, None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_calls | _values, st.sampled_from(["track", "identify", "alias"]))
def test_msgspec_reads_a_call_as_parse_json_reads_it(call: Any, kind: str) -> None:
    body = orjson.dumps(call)
    fast = _mapped(segment.read_call, body, kind)
    assert fast == _mapped(segment.read_call_loosely, body, kind)


@pytest.mark.parametrize(
    "body",
    [
        b'{"batch":[{"type":"track","properties":{"n":18446744073709551616}}]}',
        b'{"batch":[{"type":"track","properties":{"n":1e400}}]}',
        b'{"batch":[{"type":"track","event":"\\ud800"}]}',
        b'{"batch":[{"type":"track","event":"a","event":"b"}]}',
        b'{"batch":[],"batch":[{"type":"page"}]}',
        b'\xef\xbb\xbf{"batch":[]}',
    ],
)
def test_msgspec_and_parse_json_agree_on_the_edges(body: bytes) -> None:
    assert _mapped(segment.read_batch, body, None) == _mapped(
        segment.read_batch_loosely, body, None
    )


def test_a_type_that_is_an_array_is_refused_not_a_crash(client: TestClient) -> None:
    response = post(client, "batch", {"batch": [next_track(type=["track"])]})

    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["type"]
    assert problem["index"] == 0


def test_a_schema_error_names_the_sdk_field_in_loc_path_and_msg(tmp_path: Path) -> None:
    plan = {
        "events": {
            "Signed Up": {"schema": {"properties": {"plan": {"enum": ["free", "pro"]}}}}
        }
    }
    taxonomy = tmp_path / "plan.json"
    taxonomy.write_bytes(orjson.dumps(plan))
    config = Config(jsonl=tmp_path / "m.jsonl", taxonomy=taxonomy)
    with TestClient(create_app(config)) as c:
        r = post(c, "batch", {"batch": [next_track(properties={"plan": "team"})]})

    assert r.status_code == 422
    (problem,) = r.json()["detail"]
    assert problem["index"] == 0
    assert problem["loc"] == ["properties", "plan"]
    assert problem["path"] == "properties.plan"
    assert problem["msg"] == (
        'properties.plan: must be one of ["free","pro"], got "team"'
    )
    assert problem["rule"] == "enum"


@pytest.mark.parametrize("depth", [300, 1000])
def test_properties_nested_too_deep_are_refused_not_a_crash(
    client: TestClient, depth: int
) -> None:
    nested = "[" * depth + "]" * depth
    call = orjson.dumps(next_track(properties={"a": "@"})).decode()
    body = '{"batch":[' + call.replace('"@"', nested) + "]}"
    r = client.post("/segment/v1/batch", content=body, headers=basic("wk_test"))

    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"].startswith("cannot be stored as JSON")
