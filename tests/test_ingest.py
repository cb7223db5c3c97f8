from __future__ import annotations

import dataclasses
import gzip
import re
import zlib

import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, event, read_lines
from starlette.testclient import TestClient

from metrics_service import Config, create_app
from metrics_service.http.body import Gunzip
from metrics_service.http.errors import ApiError
from metrics_service.ingest import clock

BATCH_URL = "/api/metrics/events"
MiB = 1024 * 1024
GZIP = {"content-encoding": "gzip"}


def bomb(decompressed_mib: int) -> bytes:
    """Concatenated gzip members of zeros: tiny on the wire, huge once inflated."""
    return gzip.compress(b"\0" * MiB) * decompressed_mib


# --- text/plain beacons ------------------------------------------------------


@pytest.mark.parametrize("url", [EVENT_URL, BATCH_URL])
def test_text_plain_beacon_body(client: TestClient, config: Config, url: str) -> None:
    body = orjson.dumps(event() if url == EVENT_URL else [event()])
    r = client.post(url, content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 202
    assert r.json()["stored"] == 1
    assert len(read_lines(config.jsonl)) == 1


# --- Content-Encoding --------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", "x-gzip"])
def test_gzip_single_event(client: TestClient, config: Config, encoding: str) -> None:
    r = client.post(
        EVENT_URL,
        content=gzip.compress(orjson.dumps(event(metadata={"k": "v"}))),
        headers={"content-encoding": encoding, "content-type": "text/plain"},
    )
    assert r.status_code == 202
    [line] = read_lines(config.jsonl)
    assert line["metadata"] == {"k": "v"}


def test_identity_encoding_is_no_encoding(client: TestClient) -> None:
    r = client.post(
        EVENT_URL,
        content=orjson.dumps(event()),
        headers={"content-encoding": "identity"},
    )
    assert r.status_code == 202


@pytest.mark.parametrize("url", [EVENT_URL, BATCH_URL])
@pytest.mark.parametrize("encoding", ["br", "deflate", "zstd", "gzip, br"])
def test_other_encodings_415(
    client: TestClient, config: Config, url: str, encoding: str
) -> None:
    r = client.post(
        url, content=orjson.dumps(event()), headers={"content-encoding": encoding}
    )
    assert r.status_code == 415
    assert r.json() == {
        "detail": f"unsupported Content-Encoding {encoding!r}; send gzip or none"
    }
    assert read_lines(config.jsonl) == []


@pytest.mark.parametrize("url", [EVENT_URL, BATCH_URL])
def test_2mb_gzip_bomb_413(client: TestClient, config: Config, url: str) -> None:
    body = gzip.compress(b" " * (2 * MiB))
    assert len(body) < 10_000
    r = client.post(url, content=body, headers=GZIP)
    assert r.status_code == 413
    assert r.json() == {
        "detail": "decompressed body is at least 1,048,577 bytes; "
        "the limit is 1,048,576 bytes"
    }
    assert read_lines(config.jsonl) == []


def test_big_gzip_bomb_413_without_inflating_it(client: TestClient) -> None:
    body = bomb(200)
    assert len(body) < 1024 * 1024  # within the raw limit; only inflating finds it
    r = client.post(BATCH_URL, content=body, headers=GZIP)
    assert r.status_code == 413
    assert "the limit is 1,048,576 bytes" in r.json()["detail"]


def test_gunzip_stops_at_limit_plus_one() -> None:
    """The work done on a bomb is bounded by the limit, not by the bomb's size."""
    gunzip = Gunzip(limit=1000)
    with pytest.raises(ApiError) as caught:
        gunzip.feed(bomb(50))
    assert caught.value.status_code == 413
    assert gunzip.size == 1001


def test_gunzip_in_small_pieces_and_concatenated_members() -> None:
    data = orjson.dumps([event(visitor_id=f"visitor-{i}") for i in range(100)])
    body = gzip.compress(data[:500]) + gzip.compress(data[500:])
    gunzip = Gunzip(limit=len(data))
    out = b"".join(gunzip.feed(body[i : i + 7]) for i in range(0, len(body), 7))
    gunzip.finish()
    assert out == data


def test_decompressed_exactly_the_limit_is_accepted(config: Config) -> None:
    raw = orjson.dumps([event(metadata={"pad": "x" * 2000})])
    cfg = dataclasses.replace(config, max_body_bytes=len(raw))
    with TestClient(create_app(cfg)) as c:
        ok = c.post(BATCH_URL, content=gzip.compress(raw), headers=GZIP)
        assert ok.status_code == 202
        r = c.post(BATCH_URL, content=gzip.compress(raw + b" "), headers=GZIP)
    assert r.status_code == 413
    assert f"the limit is {len(raw):,} bytes" in r.json()["detail"]


def test_compressed_size_also_counts(config: Config) -> None:
    cfg = dataclasses.replace(config, max_body_bytes=100)
    noise = zlib.compress(bytes(range(256)) * 4)  # barely compressible
    with TestClient(create_app(cfg)) as c:
        r = c.post(EVENT_URL, content=gzip.compress(noise), headers=GZIP)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not gzip at all", "body is not valid gzip"),
        (gzip.compress(orjson.dumps(event()), mtime=0)[:-12], "truncated"),
        (
            gzip.compress(orjson.dumps(event()), mtime=0) + b"junk",
            "body is not valid gzip",
        ),
    ],
)
def test_bad_gzip_400(
    client: TestClient, config: Config, body: bytes, words: str
) -> None:
    r = client.post(EVENT_URL, content=body, headers=GZIP)
    assert r.status_code == 400
    assert words in r.json()["detail"]
    assert read_lines(config.jsonl) == []


def test_empty_gzip_body_is_an_empty_body(client: TestClient) -> None:
    r = client.post(EVENT_URL, content=b"", headers=GZIP)
    assert r.status_code == 400
    assert r.json()["detail"] == "malformed JSON: the body is empty"


# --- per-event size on the single endpoint -----------------------------------


def test_single_event_over_max_event_bytes_422(config: Config) -> None:
    cfg = dataclasses.replace(config, max_event_bytes=200)
    ok = event(metadata={"pad": "x" * 50})
    big = event(metadata={"pad": "x" * 300})
    with TestClient(create_app(cfg)) as c:
        assert c.post(EVENT_URL, json=ok).status_code == 202
        r = c.post(EVENT_URL, json=big)
    assert r.status_code == 422
    size = len(orjson.dumps(big))
    assert r.json() == {
        "detail": [
            {
                "loc": [],
                "msg": f"event is {size:,} bytes serialized; the limit is 200 bytes",
                "type": "event_too_large",
            }
        ]
    }
    assert len(read_lines(cfg.jsonl)) == 1


# --- policy on the single endpoint -------------------------------------------


def test_single_event_sampled_out(config: Config) -> None:
    cfg = dataclasses.replace(config, sample={"scroll": 0.0})
    with TestClient(create_app(cfg)) as c:
        r = c.post(EVENT_URL, json=event("scroll"))
        assert r.status_code == 202
        assert r.json() == {
            "ok": True,
            "stored": 0,
            "file": str(cfg.jsonl),
            "seq": None,
            "duplicates": 0,
            "sampled_out": 1,
        }
        kept = c.post(EVENT_URL, json=event("click"))
        assert kept.json()["sampled_out"] == 0
        assert kept.json()["seq"] == 1
        assert c.get(SNAPSHOT_URL).json()["total"] == 1


def test_single_event_duplicate_acknowledged(
    client: TestClient, config: Config
) -> None:
    assert client.post(EVENT_URL, json=event(event_id="e-1")).json()["seq"] == 1
    r = client.post(EVENT_URL, json=event(event_id="e-1"))
    assert r.status_code == 202
    assert (r.json()["stored"], r.json()["duplicates"], r.json()["seq"]) == (0, 1, None)
    assert len(read_lines(config.jsonl)) == 1


def test_single_event_allowlist_422(config: Config) -> None:
    cfg = dataclasses.replace(config, allowed_events=frozenset({"b", "a"}))
    with TestClient(create_app(cfg)) as c:
        r = c.post(EVENT_URL, json=event("c"))
    assert r.status_code == 422
    assert r.json()["detail"] == [
        {
            "loc": ["event"],
            "msg": "unknown event 'c'; allowed: a, b",
            "type": "event_not_allowed",
        }
    ]


# --- CORS --------------------------------------------------------------------


@pytest.mark.parametrize("url", [EVENT_URL, BATCH_URL])
def test_cors_preflight_from_another_origin(client: TestClient, url: str) -> None:
    r = client.options(
        url,
        headers={
            "origin": "https://shop.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, content-encoding",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed
    assert "content-encoding" in allowed
    assert "access-control-allow-credentials" not in r.headers


def test_cors_headers_on_the_post_itself(client: TestClient) -> None:
    r = client.post(EVENT_URL, json=event(), headers={"origin": "https://shop.example"})
    assert r.status_code == 202
    assert r.headers["access-control-allow-origin"] == "*"


def test_cors_on_errors_too(client: TestClient) -> None:
    r = client.post(EVENT_URL, content=b"{", headers={"origin": "https://a.example"})
    assert r.status_code == 400
    assert r.headers["access-control-allow-origin"] == "*"


def test_cors_configured_origins(config: Config) -> None:
    cfg = dataclasses.replace(config, cors_origins=("https://shop.example",))
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    with TestClient(create_app(cfg)) as c:
        ok = c.options(
            BATCH_URL, headers={"origin": "https://shop.example", **preflight}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://shop.example"
        bad = c.options(
            BATCH_URL, headers={"origin": "https://evil.example", **preflight}
        )
        assert bad.status_code == 400
        assert "access-control-allow-origin" not in bad.headers
        delete = c.options(
            SNAPSHOT_URL,
            headers={
                "origin": "https://shop.example",
                "access-control-request-method": "DELETE",
            },
        )
        assert delete.status_code == 400


@pytest.mark.parametrize(
    "nanos",
    [
        1_795_000_000_999_999_999,  # the last nanosecond of a second
        1_795_000_001_000_000_000,  # the first of the next
        1_795_000_001_000_999_000,
        1_795_000_001_001_000_000,
        1_795_000_001_123_456_789,
        1_795_000_001_999_000_000,
        1_795_000_000_999_999_999,  # back in time: the cache is not fooled
    ],
)
def test_the_cached_receive_time_matches_iso(
    monkeypatch: pytest.MonkeyPatch, nanos: int
) -> None:
    monkeypatch.setattr(clock.time, "time_ns", lambda: nanos)
    received = clock.received_now()
    moment = received.moment
    assert received.micros == nanos // 1000
    assert received.text == clock.iso(moment)
    assert received.iso == received.text.encode()
    assert received.ts == moment.timestamp()


# --- the User-Agent header (hardening 3) ---------------------------------------------


@pytest.mark.parametrize("url", [EVENT_URL, BATCH_URL])
def test_a_huge_user_agent_is_cut_to_its_documented_length(
    client: TestClient, config: Config, url: str
) -> None:
    from metrics_service.http.body import MAX_USER_AGENT

    assert MAX_USER_AGENT == 512
    body = orjson.dumps(event() if url == EVENT_URL else [event()] * 100)
    r = client.post(url, content=body, headers={"user-agent": "A" * 100_000})
    assert r.status_code == 202
    lines = read_lines(config.jsonl)
    assert {line["user_agent"] for line in lines} == {"A" * 512}
    assert config.jsonl.stat().st_size < 1000 * len(lines)


@pytest.mark.parametrize("timestamp", [False, True])  # the fast path, the full path
def test_a_utf8_user_agent_is_stored_as_sent(
    client: TestClient, config: Config, timestamp: bool
) -> None:
    fields = {"timestamp": "2026-03-01T10:00:00Z"} if timestamp else {}
    body = orjson.dumps(event(**fields))
    for agent in ("über-client/1.0 ☃".encode(), "Mozilla/5.0 (Ä)".encode("latin-1")):
        r = client.post(EVENT_URL, content=body, headers=[(b"user-agent", agent)])
        assert r.status_code == 202
    lines = read_lines(config.jsonl)
    assert [line["user_agent"] for line in lines] == [
        "über-client/1.0 ☃",
        "Mozilla/5.0 (Ä)",  # not UTF-8: read as latin-1
    ]


def test_a_user_agent_cut_inside_a_character_keeps_whole_characters() -> None:
    from metrics_service.http.body import MAX_USER_AGENT, read_head

    agent = ("x" * (4 * MAX_USER_AGENT - 1) + "☃").encode()
    assert read_head([(b"user-agent", agent)]).user_agent == "x" * MAX_USER_AGENT
    short = ("ü" * MAX_USER_AGENT * 2).encode()
    assert read_head([(b"user-agent", short)]).user_agent == "ü" * MAX_USER_AGENT


# --- Content-Type and charset (first hour 2) ---------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=latin-1",
        "application/json;charset=ISO-8859-1",
        "text/plain; charset=utf-16",
        'application/json; charset="windows-1252"',
        "application/x-ndjson; charset=latin1",
    ],
)
@pytest.mark.parametrize("url", [EVENT_URL, BATCH_URL])
def test_a_charset_other_than_utf8_is_415(
    client: TestClient, config: Config, content_type: str, url: str
) -> None:
    body = orjson.dumps(event() if url == EVENT_URL else [event()])
    r = client.post(url, content=body, headers={"content-type": content_type})
    if "ndjson" in content_type and url == EVENT_URL:
        assert r.status_code == 415
        return
    assert r.status_code == 415
    assert "charset" in r.json()["detail"] and "UTF-8" in r.json()["detail"]
    assert not config.jsonl.exists() or config.jsonl.read_bytes() == b""


@pytest.mark.parametrize(
    "content_type",
    [
        None,  # curl --data-binary without -H
        "application/x-www-form-urlencoded",  # curl -d without -H
        "application/json; charset=utf-8",
        "application/json; charset=UTF8",
        'text/plain;charset="UTF-8"',
    ],
)
def test_accepted_content_types(
    client: TestClient, config: Config, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(EVENT_URL, content=orjson.dumps(event()), headers=headers)
    assert r.status_code == 202
    assert len(read_lines(config.jsonl)) == 1


# --- messages speak JSON (first hour 3) --------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (orjson.dumps(event()), "got an object"),
        (
            orjson.dumps({"events": {"a": 1}}),
            "'events' must be an array, got an object",
        ),
        (b"[[1]]", "expected a JSON object, got an array"),
        (b"[1.5]", "expected a JSON object, got a number"),
        (b"[true]", "expected a JSON object, got a boolean"),
        (b"[null]", "expected a JSON object, got null"),
    ],
)
def test_type_names_in_messages_are_json_names(
    client: TestClient, body: bytes, says: str
) -> None:
    r = client.post(BATCH_URL, content=body)
    assert r.status_code == 422
    assert says in r.text
    assert not re.search(
        r"\b(dict|list|float|bool|int|str|NoneType|dictionary)\b", r.text
    )


def test_metadata_of_the_wrong_type_is_called_an_object(client: TestClient) -> None:
    r = client.post(EVENT_URL, content=orjson.dumps(event(metadata=[1])))
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"] == "Input should be an object"
