"""PostHog's wire format (/posthog): recorded bodies as posthog-js 1.449 and
posthog-python send them, through the app."""

from __future__ import annotations

import base64
import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import read_lines
from starlette.testclient import TestClient
from test_segment import replay

from metrics_service import Config, create_app

DISTINCT = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/131.0"


def pageview(**fields: Any) -> dict[str, Any]:
    """posthog-js's $pageview as recorded."""
    return {
        "uuid": "0193a1b2-c3d4-7e5f-8a9b-000000000001",
        "event": "$pageview",
        "properties": {
            "$os": "Linux",
            "$browser": "Chrome",
            "$raw_user_agent": UA,
            "$current_url": "http://127.0.0.1:5001/pricing",
            "$host": "127.0.0.1:5001",
            "$pathname": "/pricing",
            "$referrer": "$direct",
            "$lib": "web",
            "$lib_version": "1.449.0",
            "distinct_id": DISTINCT,
            "$device_id": DISTINCT,
            "token": "phc_test",
            "title": "Pricing",
        },
        "timestamp": "2026-12-03T12:00:00.123Z",
        **fields,
    }


def test_posthog_js_gzip_without_a_query_or_encoding_is_stored(
    client: TestClient, config: Config
) -> None:
    body = gzip.compress(orjson.dumps([pageview()]))
    r = client.post("/posthog/e/", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    assert r.json() == {"status": 1, "stored": 1, "duplicates": 0, "sampled_out": 0}
    (line,) = read_lines(config.jsonl)
    assert line["event"] == "$pageview"
    assert line["visitor_id"] == DISTINCT
    assert line["event_id"] == "0193a1b2-c3d4-7e5f-8a9b-000000000001"
    assert line["timestamp"] == "2026-12-03T12:00:00.123Z"
    assert line["user_agent"] == UA
    metadata = line["metadata"]
    assert "token" not in metadata  # may be METRICS_INGEST_TOKEN: never stored
    assert metadata["$current_url"] == "http://127.0.0.1:5001/pricing"
    assert metadata["$sdk"] == {
        "format": "posthog",
        "type": "page",
        "url": "http://127.0.0.1:5001/pricing",
        "path": "/pricing",
        "title": "Pricing",
        "referrer": "$direct",
        "library": "web",
        "library_version": "1.449.0",
    }


def test_gzip_js_base64_and_the_data_form(client: TestClient, config: Config) -> None:
    one = orjson.dumps(pageview(uuid="u-gzip-js"))
    r = client.post(
        "/posthog/i/v0/e/?compression=gzip-js&ver=1.449.0&_=1764763200000",
        content=gzip.compress(one),
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 200, r.text
    encoded = base64.b64encode(orjson.dumps(pageview(uuid="u-base64")))
    r = client.post(
        "/posthog/e/?compression=base64&beacon=1",
        content=b"data=" + encoded.replace(b"+", b"%2B").replace(b"=", b"%3D"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/posthog/capture/?compression=base64",
        content=base64.b64encode(orjson.dumps(pageview(uuid="u-raw-base64"))),
    )
    assert r.status_code == 200, r.text
    r = client.post("/posthog/e/?compression=lz64", content=b"x")
    assert r.status_code == 415
    assert "lz64" in r.json()["detail"]
    assert [line["event_id"] for line in read_lines(config.jsonl)] == [
        "u-gzip-js",
        "u-base64",
        "u-raw-base64",
    ]


def test_a_server_library_batch_with_sent_at(
    client: TestClient, config: Config
) -> None:
    body = {
        "batch": [
            {
                "event": "signed_up",
                "distinct_id": "user-42",
                "properties": {"plan": "pro", "$lib": "posthog-python"},
                "timestamp": "2026-12-03T12:00:00+00:00",
                "uuid": "py-1",
            },
            {
                "event": "$identify",
                "distinct_id": "user-42",
                "$set": {"email": "ada@example.com"},
                "$set_once": {"first_seen": "2026-12-01"},
                "uuid": "py-2",
            },
        ],
        "api_key": "phc_test",
        "historical_migration": False,
        "sent_at": "2026-12-03T12:00:00+00:00",
    }
    r = client.post("/posthog/batch/", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 2
    first, second = read_lines(config.jsonl)
    assert first["visitor_id"] == "user-42"
    assert first["metadata"]["plan"] == "pro"
    # sent_at equals timestamp: the event is stamped with the receive time.
    assert first["timestamp"] == first["received_at"]
    assert second["event"] == "$identify"
    assert second["metadata"]["$set"] == {"email": "ada@example.com"}
    assert second["metadata"]["$set_once"] == {"first_seen": "2026-12-01"}
    assert second["metadata"]["$sdk"]["type"] == "identify"
    assert second["user_agent"] == "testclient"


def test_refusals_name_the_posthog_fields(client: TestClient, config: Config) -> None:
    no_id = pageview()
    del no_id["properties"]["distinct_id"]
    r = client.post(
        "/posthog/e/",
        json=[
            pageview(uuid="fine"),
            no_id,
            {"event": "x", "distinct_id": "abc"},
            {"distinct_id": DISTINCT, "properties": []},
        ],
    )
    assert r.status_code == 422
    by_index = {(p["index"], tuple(p["loc"])): p["msg"] for p in r.json()["detail"]}
    assert by_index[(1, ("distinct_id",))].startswith("no distinct_id")
    assert "6 characters" in by_index[(2, ("distinct_id",))]
    assert by_index[(3, ("event",))] == "no event name"
    assert by_index[(3, ("properties",))] == "Input should be an object"
    assert not config.jsonl.exists() or read_lines(config.jsonl) == []
    r = client.post("/posthog/batch/", json={"api_key": "k", "batch": "nope"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["batch"]
    r = client.post("/posthog/e/", content=b'"text"')
    assert r.status_code == 422


def test_a_repeated_uuid_is_stored_once(client: TestClient, config: Config) -> None:
    body = orjson.dumps(pageview())
    assert client.post("/posthog/e/", content=body).json()["stored"] == 1
    again = client.post("/posthog/e/", content=body)
    assert again.status_code == 200
    assert again.json()["duplicates"] == 1
    assert len(read_lines(config.jsonl)) == 1


def test_a_gzip_bomb_stops_at_the_body_limit(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", max_body_bytes=10_000)
    with TestClient(create_app(config)) as c:
        r = c.post("/posthog/e/", content=gzip.compress(b"[" + b" " * 1_000_000 + b"]"))
    assert r.status_code == 413
    assert "decompressed" in r.json()["detail"]


def test_the_token_is_checked_against_the_ingest_token(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ingest_token="phc_secret")
    with TestClient(create_app(config)) as c:
        r = c.post("/posthog/e/", json=pageview())
        assert r.status_code == 401
        assert "properties.token" in r.json()["detail"]
        assert "phc_secret" not in r.text
        body = pageview()
        body["properties"]["token"] = "phc_secret"
        assert c.post("/posthog/e/", json=body).status_code == 200
        batch = {
            "api_key": "phc_secret",
            "batch": [{"event": "e", "distinct_id": DISTINCT}],
        }
        assert c.post("/posthog/batch/", json=batch).status_code == 200
        del body["properties"]["token"]
        r = c.post("/posthog/e/", json={**body, "uuid": "u-2"})
        assert r.status_code == 401
        assert "required" in r.json()["detail"]
        # The start-up calls stay open: posthog-js makes them without a key.
        assert c.get("/posthog/array/phc_x/config").status_code == 200
        assert c.post("/posthog/flags/?v=2").status_code == 200
    assert len(read_lines(config.jsonl)) == 2


def test_the_start_up_calls(client: TestClient) -> None:
    r = client.get("/posthog/array/phc_test/config.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert 'window._POSTHOG_REMOTE_CONFIG["phc_test"]' in r.text
    r = client.get("/posthog/array/phc_test/config")
    assert r.status_code == 200
    assert r.json()["token"] == "phc_test"
    assert r.json()["sessionRecording"] is False
    r = client.post(
        "/posthog/flags/?v=2&config=true",
        content=gzip.compress(b'{"token":"phc_test","distinct_id":"x"}'),
    )
    assert r.status_code == 200
    assert r.json()["featureFlags"] == {}
    assert r.json()["errorsWhileComputingFlags"] is False


@pytest.mark.parametrize("fixture", ["posthog_js", "posthog_js_no_compression"])
def test_posthog_js_recordings_replay(
    client: TestClient, config: Config, fixture: str
) -> None:
    answers = replay(client, fixture)
    assert [a for a in answers if a[1] != 200] == []
    captures = [a for a in answers if a[0] == "POST /posthog/e/"]
    assert all(a[2]["status"] == 1 for a in captures)
    lines = read_lines(config.jsonl)
    assert len(lines) == sum(a[2]["stored"] for a in captures) > 0
    names = [line["event"] for line in lines]
    assert "$pageview" in names
    assert "$identify" in names
    identify = lines[names.index("$identify")]
    assert identify["metadata"]["$set"]
    assert all(line["metadata"]["$sdk"]["library"] == "web" for line in lines)
    assert all("token" not in line["metadata"] for line in lines)
    assert all(line["user_agent"].startswith("Mozilla/5.0") for line in lines)


def test_sampling_applies_and_is_reported(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", sample={"$pageview": 0.0})
    with TestClient(create_app(config)) as c:
        r = c.post("/posthog/e/", json=[pageview(), pageview(event="kept", uuid="u-k")])
    assert r.status_code == 200
    assert r.json() == {"status": 1, "stored": 1, "duplicates": 0, "sampled_out": 1}
    assert [line["event"] for line in read_lines(config.jsonl)] == ["kept"]


@pytest.mark.parametrize("depth", [300, 1000])
def test_properties_nested_too_deep_are_refused_and_kept_without_the_token(
    client: TestClient, config: Config, depth: int
) -> None:
    nested = "[" * depth + "]" * depth
    body = (
        '{"api_key":"phc_secret","batch":[{"event":"x","distinct_id":"visitor-1",'
        f'"properties":{{"a":{nested}}}}}]}}'
    )
    r = client.post("/posthog/batch/", content=body)

    assert r.status_code == 422
    assert "cannot be stored as JSON" in r.json()["detail"][0]["msg"]
    (record,) = client.get("/api/metrics/behavior/rejected").json()["rejections"]
    assert record["status"] == 422
    assert "phc_secret" not in record["body"]
    assert "[nested too deep]" in record["body"]
    assert read_lines(config.jsonl) == []
