"""Nasty inputs: each gets a clear 4xx, nothing half-stored, and the service keeps answering.

Decisions this file pins down:
- duplicate keys in an object: the last one wins (as in orjson, JavaScript and Python);
- an integer beyond 64 bits is refused with 422 (it would silently lose digits); a
  number beyond the double range (`1e400`) is malformed JSON, 400.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, read_lines
from starlette.testclient import TestClient

from metrics_service import Config
from metrics_service.testing import MetricsServer

BATCH_URL = "/api/metrics/events"
HEAD = b'{"visitor_id": "visitor-1", "event": '


def event_body(name: bytes = b'"page_view"', metadata: bytes = b"{}") -> bytes:
    return HEAD + name + b', "metadata": ' + metadata + b"}"


def post_both(client: TestClient, body: bytes) -> list[httpx.Response]:
    """The same event alone and as a one-event batch."""
    return [
        client.post(EVENT_URL, content=body, headers={"Content-Type": "text/plain"}),
        client.post(
            BATCH_URL,
            content=b"[" + body + b"]",
            headers={"Content-Type": "application/json"},
        ),
    ]


def assert_nothing_stored(client: TestClient, config: Config) -> None:
    snapshot = client.get(SNAPSHOT_URL)
    assert snapshot.status_code == 200
    assert snapshot.json()["total"] == 0
    assert not config.jsonl.exists() or config.jsonl.read_bytes() == b""


def assert_ring_equals_file(client: TestClient, config: Config) -> list[dict[str, Any]]:
    lines = read_lines(config.jsonl)
    snapshot = client.get(SNAPSHOT_URL, params={"limit": 1000})
    assert snapshot.status_code == 200
    assert list(reversed(snapshot.json()["last_events"])) == lines
    return lines


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (event_body(b'"page\xff_view"'), 400, "UTF-8"),
        (event_body(b'"\xc0\xaf"'), 400, "UTF-8"),
        (event_body(b'"a\xed\xa0\x80b"'), 400, "UTF-8"),  # a surrogate, UTF-8 encoded
        (event_body(b'"a\\ud800b"'), 400, "surrogate"),
        (event_body(b'"x"', b'{"k": "\\udfff"}'), 400, "surrogate"),
        (event_body(b'"a\\u0000b"'), 422, "control"),
        (event_body(b'"\\u0000"'), 422, "control"),
        (event_body(b'"a\\u0007b"'), 422, "control"),
        (event_body(b'"\\u001b[31mred"'), 422, "control"),
        (event_body(b'"a\\u007fb"'), 422, "control"),
        (event_body(b'"a\\u0085b"'), 422, "control"),
        (event_body(b'"line\\nbreak"'), 422, "control"),
        (event_body(b'"x"', b'{"a": 1e400}'), 400, "infinity"),
        (event_body(b'"x"', b'{"a": -1e400}'), 400, "infinity"),
        (event_body(b'"x"', b'{"a": ' + b"9" * 5000 + b"}"), 400, "malformed"),
        (event_body(b'"x"', b'{"a": NaN}'), 400, "malformed"),
        (event_body(b"1e999"), 400, "malformed"),
    ],
)
def test_bad_text_and_numbers_get_a_clear_4xx(
    client: TestClient, config: Config, body: bytes, status: int, says: str
) -> None:
    for response in post_both(client, body):
        assert response.status_code == status
        assert says.lower() in response.text.lower()
    assert_nothing_stored(client, config)


def test_invalid_utf8_names_the_first_bad_byte(client: TestClient) -> None:
    body = event_body(b'"page\xff_view"')
    for response in post_both(client, body):
        assert response.status_code == 400
        assert "surrogate" not in response.json()["detail"]
    assert "byte 42 (0xff)" in post_both(client, body)[0].json()["detail"]


def test_ten_thousand_levels_of_nesting(client: TestClient, config: Config) -> None:
    deep = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    started = time.monotonic()
    for response in post_both(client, event_body(b'"x"', deep)):
        assert response.status_code == 400
        assert "depth" in response.json()["detail"]
    deep_array = b"[" * 10_000 + b"]" * 10_000
    for response in post_both(client, event_body(b'"x"', deep_array)):
        assert response.status_code == 400
    assert time.monotonic() - started < 30
    assert_nothing_stored(client, config)


def test_nesting_that_parses_but_cannot_be_stored(
    client: TestClient, config: Config
) -> None:
    # orjson reads 1,024 levels but writes only 254: refuse rather than fail at write time.
    deep = b'{"a":' * 500 + b"1" + b"}" * 500
    for response in post_both(client, event_body(b'"x"', deep)):
        assert response.status_code == 422
    assert_nothing_stored(client, config)


def test_a_hundred_thousand_metadata_keys(client: TestClient, config: Config) -> None:
    keys = b"{" + b",".join(b'"%x":0' % i for i in range(100_000)) + b"}"
    started = time.monotonic()
    for response in post_both(client, event_body(b'"x"', keys)):
        assert response.status_code in (413, 422)
        assert "limit" in response.text
    assert time.monotonic() - started < 30
    assert_nothing_stored(client, config)


def test_a_hundred_thousand_keys_over_the_body_limit(
    client: TestClient, config: Config
) -> None:
    keys = b"{" + b",".join(b'"key-%06d":0' % i for i in range(100_000)) + b"}"
    for response in post_both(client, event_body(b'"x"', keys)):
        assert response.status_code == 413
    assert_nothing_stored(client, config)


def test_duplicate_keys_last_one_wins(client: TestClient, config: Config) -> None:
    body = (
        b'{"visitor_id": "visitor-1", "event": "first", "event": "second", '
        b'"metadata": {"k": 1, "k": 2}}'
    )
    response = client.post(EVENT_URL, content=body)
    assert response.status_code == 202
    [line] = assert_ring_equals_file(client, config)
    assert line["event"] == "second"
    assert line["metadata"] == {"k": 2}


def test_duplicate_keys_cannot_smuggle_an_invalid_value(
    client: TestClient, config: Config
) -> None:
    body = b'{"visitor_id": "visitor-1", "event": "ok", "event": "bad\\u0000"}'
    for response in post_both(client, body):
        assert response.status_code == 422
    assert_nothing_stored(client, config)


def test_integers_beyond_64_bits_are_422(client: TestClient, config: Config) -> None:
    body = event_body(b'"x"', b'{"big": [1, {"n": 123456789012345678901234567890}]}')
    for response in post_both(client, body):
        assert response.status_code == 422
        assert "123456789012345678901234567890 (30 digits)" in response.json()["detail"]
    assert_nothing_stored(client, config)


def test_64_bit_integers_and_long_digit_strings_are_kept_exact(
    client: TestClient, config: Config
) -> None:
    metadata = (
        b'{"max": 18446744073709551615, "min": -9223372036854775808,'
        b' "id": "123456789012345678901234567890"}'
    )
    response = client.post(EVENT_URL, content=event_body(b'"x"', metadata))
    assert response.status_code == 202
    [line] = assert_ring_equals_file(client, config)
    assert line["metadata"] == {
        "max": 18446744073709551615,
        "min": -9223372036854775808,
        "id": "123456789012345678901234567890",
    }


def test_control_characters_in_metadata_are_stored_escaped(
    client: TestClient, config: Config
) -> None:
    metadata = {"nul\u0000key": "a\u0000b", "esc": "\u001b[2J", "sep": "\u2028\u2029"}
    body = orjson.dumps({"visitor_id": "visitor-1", "event": "x", "metadata": metadata})
    response = client.post(EVENT_URL, content=body)
    assert response.status_code == 202
    raw = config.jsonl.read_bytes()
    assert raw.count(b"\n") == 1
    assert b"\x00" not in raw
    [line] = assert_ring_equals_file(client, config)
    assert line["metadata"] == metadata


@pytest.mark.parametrize(
    "body",
    [b"", b"   ", b"null", b'"str"', b"[]", b"{", b"\x00" * 64, b"\xef\xbb\xbf{}"],
)
def test_empty_and_odd_bodies(client: TestClient, config: Config, body: bytes) -> None:
    for url in (EVENT_URL, BATCH_URL):
        response = client.post(url, content=body)
        assert 400 <= response.status_code < 500
        assert "detail" in response.json()
    assert_nothing_stored(client, config)


def gzip_bomb(mib: int) -> bytes:
    """`mib` MiB of zeros, gzipped. Once deflate's window is all zeros, each further
    MiB compresses to the same bytes: those are repeated rather than recomputed."""
    chunk = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
    again = deflate.compress(chunk) + deflate.flush(zlib.Z_SYNC_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # RFC 1952, no name
    trailer = struct.pack("<II", crc, (mib << 20) % 2**32)
    return header + first + again * (mib - 1) + deflate.flush() + trailer


def test_gzip_bomb_inflates_to_its_size() -> None:
    assert gzip.decompress(gzip_bomb(3)) == bytes(3 << 20)


def test_a_gzip_bomb_is_refused_quickly(client: TestClient, config: Config) -> None:
    bomb = gzip_bomb(256)  # 256 MiB inflated
    assert len(bomb) < 1024 * 1024
    started = time.monotonic()
    for url in (EVENT_URL, BATCH_URL):
        response = client.post(url, content=bomb, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 413
        assert "limit" in response.json()["detail"]
    assert time.monotonic() - started < 30
    assert_nothing_stored(client, config)


def test_gzip_inside_gzip_is_decoded_once(client: TestClient, config: Config) -> None:
    inner = gzip.compress(event_body())
    response = client.post(
        EVENT_URL, content=gzip.compress(inner), headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 400
    assert_nothing_stored(client, config)


def test_truncated_gzip(client: TestClient, config: Config) -> None:
    data = gzip.compress(event_body())[:-6]
    response = client.post(
        EVENT_URL, content=data, headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 400
    assert_nothing_stored(client, config)


# Real server, raw sockets: what an HTTP client library would never send.


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsServer]:
    """One server for the module: each test checks that its own requests stored
    nothing (stored() before, assert_healthy_and_unchanged() after)."""
    sink = tmp_path_factory.mktemp("hostile") / "m.jsonl"
    with MetricsServer(sink, env={"METRICS_BODY_TIMEOUT": "1"}) as s:
        yield s


@contextlib.contextmanager
def raw(server: MetricsServer, timeout: float = 15) -> Iterator[socket.socket]:
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        yield sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (bounded by the socket timeout)."""
    chunks: list[bytes] = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def statuses(data: bytes) -> list[int]:
    return [
        int(line.split(b" ")[1])
        for line in data.split(b"\r\n")
        if line.startswith(b"HTTP/1.1 ")
    ]


def request_head(length: int | str, *, path: str = EVENT_URL, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def stored(server: MetricsServer) -> tuple[int, bytes]:
    """The ring's size and the sink's bytes."""
    health = httpx.get(f"{server.url}/api/metrics/behavior/health", timeout=5)
    assert health.status_code == 200
    path = server.jsonl_path
    return health.json()["ring_size"], path.read_bytes() if path.exists() else b""


def assert_healthy_and_unchanged(
    server: MetricsServer, before: tuple[int, bytes]
) -> None:
    assert stored(server) == before


def test_a_body_that_stops_arriving_gets_408(server: MetricsServer) -> None:
    before = stored(server)
    body = event_body()
    with raw(server) as stalled:
        stalled.sendall(request_head(len(body)) + body[:10])
        started = time.monotonic()
        # The stalled request holds no worker: others are answered meanwhile.
        health = httpx.get(f"{server.url}/api/metrics/behavior/health", timeout=5)
        assert health.status_code == 200
        answer = read_all(stalled)
        waited = time.monotonic() - started
    assert statuses(answer) == [408]
    assert b'"detail"' in answer
    assert waited < 12  # the socket timeout is 15 s; the deadline is 1 s
    assert_healthy_and_unchanged(server, before)


def test_a_chunked_body_that_stops_arriving_gets_408(server: MetricsServer) -> None:
    before = stored(server)
    head = (
        f"POST {BATCH_URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with raw(server) as stalled:
        stalled.sendall(head + b'5\r\n[{"vi\r\n')
        answer = read_all(stalled)
    assert statuses(answer) == [408]
    assert_healthy_and_unchanged(server, before)


def test_a_content_length_larger_than_the_body(server: MetricsServer) -> None:
    before = stored(server)
    body = event_body()
    with raw(server) as sock:
        sock.sendall(request_head(len(body) + 100) + body)
        answer = read_all(sock)
    assert statuses(answer) == [408]
    assert_healthy_and_unchanged(server, before)


def test_a_content_length_smaller_than_the_body(server: MetricsServer) -> None:
    before = stored(server)
    body = event_body()
    with raw(server) as sock:
        sock.sendall(request_head(len(body) - 5) + body)
        answer = read_all(sock)
    codes = statuses(answer)
    # The cut JSON is a 400; the 5 left-over bytes are then a bad request of their own.
    assert codes
    assert codes[0] == 400
    assert all(400 <= code < 500 for code in codes)
    assert_healthy_and_unchanged(server, before)


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "99999999999999999999999"])
def test_a_content_length_that_is_not_a_length(
    server: MetricsServer, length: str
) -> None:
    before = stored(server)
    with raw(server) as sock:
        sock.sendall(request_head(length) + event_body())
        answer = read_all(sock)
    codes = statuses(answer)
    assert codes
    assert all(400 <= code < 500 for code in codes)
    assert_healthy_and_unchanged(server, before)


def test_a_client_that_hangs_up_mid_body(server: MetricsServer) -> None:
    before = stored(server)
    body = event_body()
    for _ in range(20):
        with raw(server) as sock:
            sock.sendall(request_head(len(body)) + body[:20])
    assert_healthy_and_unchanged(server, before)
    response = httpx.post(f"{server.url}{EVENT_URL}", content=body, timeout=5)
    assert response.status_code == 202


def test_many_stalled_bodies_do_not_starve_the_service(server: MetricsServer) -> None:
    body = event_body()
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(raw(server)) for _ in range(50)]
        for sock in sockets:
            sock.sendall(request_head(len(body)) + body[:5])
        response = httpx.post(f"{server.url}{EVENT_URL}", content=body, timeout=5)
        assert response.status_code == 202
        answers = [read_all(sock) for sock in sockets]
    assert all(statuses(answer) == [408] for answer in answers)


def test_headers_that_never_finish_do_not_block_others(server: MetricsServer) -> None:
    with contextlib.ExitStack() as stack:
        for _ in range(30):
            sock = stack.enter_context(raw(server))
            sock.sendall(b"POST /api/metrics/event HTTP/1.1\r\nHost: x\r\nContent-")
        response = httpx.post(
            f"{server.url}{EVENT_URL}", content=event_body(), timeout=5
        )
        assert response.status_code == 202


# --- integers past 64 bits on every path (hardening 5) -----------------------------

BELOW_INT64 = b"-9999999999999999999"  # 19 digits, below -2**63


@pytest.mark.parametrize(
    ("url", "content_type", "body"),
    [
        (EVENT_URL, "application/json", event_body(b'"x"', b'{"n": %s}' % BELOW_INT64)),
        (
            BATCH_URL,
            "application/json",
            b"["
            + event_body(b'"x"', b"{}")[:-1]
            + b', "metadata": {"n": %s}}]' % BELOW_INT64,
        ),
        (
            BATCH_URL,
            "application/x-ndjson",
            event_body(b'"x"', b'{"n": %s}' % BELOW_INT64) + b"\n",
        ),
        (
            EVENT_URL,
            "application/json",
            b'{"visitor_id": "visitor-1", "event": "x", "timestamp": '
            b'"2026-03-01T10:00:00Z", "metadata": {"n": %s}}' % BELOW_INT64,
        ),
        (EVENT_URL, "application/json", event_body(b'"x"', b"[%s]" % BELOW_INT64)),
    ],
)
def test_negative_integers_below_64_bits_are_422_on_every_path(
    client: TestClient, config: Config, url: str, content_type: str, body: bytes
) -> None:
    r = client.post(url, content=body, headers={"content-type": content_type})
    assert r.status_code == 422
    assert "-9999999999999999999 (19 digits) does not fit in 64 bits" in r.text
    assert_nothing_stored(client, config)


# --- bidi controls and zero-width characters in event names (hardening 11) --------


@pytest.mark.parametrize(
    "char",
    [
        "\u202e",
        "\u202a",
        "\u2066",
        "\u2069",
        "\u200e",
        "\u200b",
        "\u200d",
        "\ufeff",
        "\u2060",
        "\u2028",
    ],
)
def test_bidi_and_zero_width_characters_in_event_names_are_422(
    client: TestClient, config: Config, char: str
) -> None:
    body = event_body(orjson.dumps(f"sign{char}up"))
    for response in post_both(client, body):
        assert response.status_code == 422
        assert "bidi" in response.text and "zero-width" in response.text
    assert_nothing_stored(client, config)


# --- line separators in stored lines (hardening 12) --------------------------------

SEPARATORS = "a\u2028b\u2029c\u0085d"


@pytest.mark.parametrize("timestamp", [False, True])  # the fast path, the full path
def test_line_separators_are_stored_escaped(
    client: TestClient, config: Config, timestamp: bool
) -> None:
    event: dict[str, Any] = {
        "visitor_id": "visitor-1",
        "event": "x",
        "metadata": {SEPARATORS: SEPARATORS},
        "user_agent": SEPARATORS,
    }
    if timestamp:
        event["timestamp"] = "2026-03-01T10:00:00Z"
    body = orjson.dumps(event)
    for response in post_both(client, body):
        assert response.status_code == 202
    raw = config.jsonl.read_bytes()
    assert b"\xe2\x80\xa8" not in raw and b"\xe2\x80\xa9" not in raw
    assert b"\xc2\x85" not in raw
    assert raw.count(b"\\u2028") == 6 and raw.count(b"\\u0085") == 6
    text = raw.decode()
    assert len(text.splitlines()) == 2
    lines = assert_ring_equals_file(client, config)
    for line in lines:
        assert line["metadata"] == {SEPARATORS: SEPARATORS}
        assert line["user_agent"] == SEPARATORS


def test_a_sink_with_raw_line_separators_still_replays(tmp_path: Path) -> None:
    from starlette.testclient import TestClient as Client

    from metrics_service import create_app

    line = (
        '{"seq":1,"received_at":"2026-03-01T10:00:00.000Z","timestamp":'
        '"2026-03-01T10:00:00.000Z","event":"x","visitor_id":"visitor-1",'
        f'"metadata":{{"k":"{SEPARATORS}"}},"user_agent":null}}\n'
    )
    config = Config(jsonl=tmp_path / "m.jsonl")
    config.jsonl.write_text(line)
    with Client(create_app(config)) as client:
        r = client.get(SNAPSHOT_URL)
        assert r.status_code == 200
        [event] = r.json()["last_events"]
        assert event["metadata"] == {"k": SEPARATORS}
        r = client.post(EVENT_URL, content=event_body())
        assert r.status_code == 202
        assert r.json()["seq"] == 2
