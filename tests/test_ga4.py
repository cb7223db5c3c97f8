"""GA4 (/ga4): Measurement Protocol requests, the validation server, and gtag's
`/g/collect` hits from recorded request strings, through the app."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import read_lines
from starlette.testclient import TestClient

from metrics_service import Config, create_app

CID = "1234567890.1764763200"
MP = "/ga4/mp/collect?measurement_id=G-TEST123&api_secret=s3cr3t"
DEBUG = "/ga4/debug/mp/collect?measurement_id=G-TEST123&api_secret=s3cr3t"
# gtag.js's page_view hit as recorded (its common parameters in the URL).
GTAG_URL = (
    "/ga4/g/collect?v=2&tid=G-TEST123&gtm=45je4c20v9&_p=1764763200000&gcd=13l3l3l3l1l1"
    f"&npa=0&dma=0&cid={CID}&ul=en-us&sr=800x600&uaa=x86&are=1&frm=0&pscdl=noapi"
    "&_eu=AAAI&_s=1&sid=1764763200&sct=1&seg=0&dl=http%3A%2F%2F127.0.0.1%3A5001%2Fpricing"
    "&dr=http%3A%2F%2F127.0.0.1%3A5001%2F&dt=Pricing&uid=user-42&up.plan=pro"
)


def mp_body(**fields: Any) -> dict[str, Any]:
    return {
        "client_id": CID,
        "user_id": "user-42",
        "user_properties": {"plan": {"value": "pro"}},
        "events": [
            {"name": "purchase", "params": {"currency": "EUR", "value": 9.5}},
            {"name": "tutorial_begin"},
        ],
        **fields,
    }


def test_a_measurement_protocol_request_is_stored(
    client: TestClient, config: Config
) -> None:
    micros = time.time_ns() // 1000 - 60_000_000
    r = client.post(MP, json=mp_body(timestamp_micros=micros))
    assert r.status_code == 204
    assert r.content == b""
    first, second = read_lines(config.jsonl)
    assert first["event"] == "purchase"
    assert first["visitor_id"] == CID
    assert "event_id" not in first
    assert first["metadata"] == {
        "currency": "EUR",
        "value": 9.5,
        "$sdk": {
            "format": "ga4",
            "type": "mp",
            "user_id": "user-42",
            "measurement_id": "G-TEST123",
            "user_properties": {"plan": {"value": "pro"}},
        },
    }
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(micros // 1_000_000))
    assert first["timestamp"].startswith(expected)
    assert second["event"] == "tutorial_begin"
    assert second["metadata"]["$sdk"]["type"] == "mp"


def test_an_app_stream_uses_app_instance_id(client: TestClient, config: Config) -> None:
    body = {"app_instance_id": "a1b2c3d4e5f6", "events": [{"name": "level_up"}]}
    r = client.post("/ga4/mp/collect?firebase_app_id=1:2:android:3", json=body)
    assert r.status_code == 204
    (line,) = read_lines(config.jsonl)
    assert line["visitor_id"] == "a1b2c3d4e5f6"
    assert line["metadata"]["$sdk"]["firebase_app_id"] == "1:2:android:3"


def test_refusals_name_the_measurement_protocol_fields(
    client: TestClient, config: Config
) -> None:
    r = client.post(
        MP,
        json={
            "events": [
                {"name": "ok"},
                {"params": {"a": 1}},
                {"name": "late", "timestamp_micros": "yesterday"},
            ]
        },
    )
    assert r.status_code == 422
    by_index = {(p["index"], tuple(p["loc"])): p["msg"] for p in r.json()["detail"]}
    assert by_index[(0, ("client_id",))].startswith("no client_id or app_instance_id")
    assert by_index[(1, ("events", 1, "name"))] == "an event needs its name"
    assert "microseconds" in by_index[(2, ("events", 2, "timestamp_micros"))]
    r = client.post(MP, json={"client_id": CID, "events": {"name": "x"}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["events"]
    r = client.post(MP, json={"client_id": "123", "events": [{"name": "x"}]})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["client_id"]
    # A request-level timestamp_micros is named as such, also after the event-level
    # one was (the field locations are shared between requests, never changed).
    for _ in range(2):
        r = client.post(
            MP,
            json={"client_id": CID, "timestamp_micros": -1, "events": [{"name": "x"}]},
        )
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["timestamp_micros"]
    assert not config.jsonl.exists() or read_lines(config.jsonl) == []


def test_the_api_secret_is_checked_against_the_ingest_token(tmp_path: Path) -> None:
    config = Config(jsonl=tmp_path / "m.jsonl", ingest_token="s3cr3t")
    with TestClient(create_app(config)) as c:
        r = c.post("/ga4/mp/collect?measurement_id=G-1", json=mp_body())
        assert r.status_code == 401
        assert "api_secret" in r.json()["detail"]
        r = c.post("/ga4/mp/collect?measurement_id=G-1&api_secret=no", json=mp_body())
        assert r.status_code == 401
        assert c.post(MP, json=mp_body()).status_code == 204
        # gtag sends no key: the token itself, as ?token= or a bearer header.
        assert c.get(GTAG_URL + "&en=page_view").status_code == 401
        assert c.get(GTAG_URL + "&en=page_view&token=s3cr3t").status_code == 204
        # The validation server stores nothing and stays open.
        assert c.post(DEBUG, json=mp_body()).status_code == 200
    assert [line["event"] for line in read_lines(config.jsonl)] == [
        "purchase",
        "tutorial_begin",
        "page_view",
    ]


def test_a_gtag_get_hit(client: TestClient, config: Config) -> None:
    r = client.get(
        GTAG_URL + "&en=view_item&ep.item=Pro%20plan&epn.value=49&epn.ratio=0.5"
    )
    assert r.status_code == 204
    (line,) = read_lines(config.jsonl)
    assert line["event"] == "view_item"
    assert line["visitor_id"] == CID
    assert line["metadata"] == {
        "item": "Pro plan",
        "value": 49,
        "ratio": 0.5,
        "$sdk": {
            "format": "ga4",
            "type": "gtag",
            "user_id": "user-42",
            "measurement_id": "G-TEST123",
            "url": "http://127.0.0.1:5001/pricing",
            "title": "Pricing",
            "referrer": "http://127.0.0.1:5001/",
            "session_id": "1764763200",
            "user_properties": {"plan": "pro"},
        },
    }


def test_a_gtag_post_with_several_hits(client: TestClient, config: Config) -> None:
    body = (
        b"en=page_view&_fv=1&_ss=1&_et=12\n"
        b"en=scroll&epn.percent_scrolled=90&_et=3021\n"
        b"en=click&ep.link_url=http%3A%2F%2Fexample.com%2F&ep.outbound=true&_et=40\n"
    )
    r = client.post(GTAG_URL, content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 204
    lines = read_lines(config.jsonl)
    assert [line["event"] for line in lines] == ["page_view", "scroll", "click"]
    assert lines[1]["metadata"]["percent_scrolled"] == 90
    assert lines[2]["metadata"]["link_url"] == "http://example.com/"
    assert {line["visitor_id"] for line in lines} == {CID}
    # One URL, no body: the URL is the hit.
    assert client.post(GTAG_URL + "&en=first_visit").status_code == 204
    assert read_lines(config.jsonl)[-1]["event"] == "first_visit"


def test_gtag_refusals_name_the_parameters(client: TestClient, config: Config) -> None:
    body = b"en=scroll&epn.percent=ninety\nepn.x=1\n"
    r = client.post(GTAG_URL, content=body)
    assert r.status_code == 422
    by_index = {(p["index"], tuple(p["loc"])): p["msg"] for p in r.json()["detail"]}
    assert by_index[(0, ("epn.percent",))] == "expected a number, got 'ninety'"
    assert by_index[(1, ("en",))] == "no en (the event name)"
    r = client.get("/ga4/g/collect?v=2&en=page_view")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["cid"]
    assert not config.jsonl.exists() or read_lines(config.jsonl) == []


def messages(client: TestClient, body: Any, url: str = DEBUG) -> list[tuple[str, str]]:
    r = client.post(url, json=body)
    assert r.status_code == 200
    return [
        (m["fieldPath"], m["validationCode"]) for m in r.json()["validationMessages"]
    ]


def test_the_validation_server_accepts_a_valid_request(
    client: TestClient, config: Config
) -> None:
    assert messages(client, mp_body()) == []
    assert not config.jsonl.exists() or read_lines(config.jsonl) == []


def test_the_validation_server_applies_googles_rules(client: TestClient) -> None:
    body = {
        "user_id": "u" * 257,
        "timestamp_micros": 1,
        "user_properties": {
            "user_id": {"value": "x"},
            "ga_thing": {"value": "x"},
            "a_name_longer_than_24_chars": {"value": "x"},
            "plan": {"value": "p" * 37},
            "bare": "no value object",
        },
        "events": [
            {"name": "_starts_with_underscore"},
            {"name": "has space"},
            {"name": "e" * 41},
            {"name": "session_start"},
            {"name": "firebase_thing"},
            {"name": "ok", "params": {f"p{i}": i for i in range(26)}},
            {
                "name": "ok2",
                "params": {
                    "long": "v" * 101,
                    "google_x": 1,
                    "firebase_conversion": 1,
                    "1bad": 1,
                    "nested": {"a": 1},
                    "items": "not an array",
                },
            },
            {},
        ],
    }
    found = messages(client, body, "/ga4/debug/mp/collect")
    assert found == [
        ("measurement_id", "VALUE_REQUIRED"),
        ("client_id", "VALUE_REQUIRED"),
        ("user_id", "VALUE_OUT_OF_BOUNDS"),
        ("timestamp_micros", "VALUE_OUT_OF_BOUNDS"),
        ("user_properties.user_id", "NAME_RESERVED"),
        ("user_properties.ga_thing", "NAME_RESERVED"),
        ("user_properties.a_name_longer_than_24_chars", "VALUE_OUT_OF_BOUNDS"),
        ("user_properties.plan.value", "VALUE_OUT_OF_BOUNDS"),
        ("user_properties.bare", "VALUE_REQUIRED"),
        ("events[0].name", "NAME_INVALID"),
        ("events[1].name", "NAME_INVALID"),
        ("events[2].name", "VALUE_OUT_OF_BOUNDS"),
        ("events[3].name", "NAME_RESERVED"),
        ("events[4].name", "NAME_RESERVED"),
        ("events[5].params", "EXCEEDED_MAX_ENTITIES"),
        ("events[6].params.long", "VALUE_OUT_OF_BOUNDS"),
        ("events[6].params.google_x", "NAME_RESERVED"),
        ("events[6].params.firebase_conversion", "NAME_RESERVED"),
        ("events[6].params.1bad", "NAME_INVALID"),
        ("events[6].params.nested", "VALUE_INVALID"),
        ("events[6].params.items", "VALUE_INVALID"),
        ("events[7].name", "VALUE_REQUIRED"),
    ]
    many = {"client_id": CID, "events": [{"name": "e"}] * 26}
    assert messages(client, many) == [("events", "EXCEEDED_MAX_ENTITIES")]
    assert messages(client, {"client_id": CID, "events": []}) == [
        ("events", "VALUE_REQUIRED")
    ]
    r = client.post(DEBUG, content=b"{not json")
    assert r.status_code == 400


def test_a_gtag_hit_takes_the_test_tag_from_the_url(
    client: TestClient, config: Config
) -> None:
    assert client.get(GTAG_URL + "&en=page_view&test_id=spec-7").status_code == 204
    (line,) = read_lines(config.jsonl)
    assert line["test_id"] == "spec-7"
    assert "test_id" not in line["metadata"]
