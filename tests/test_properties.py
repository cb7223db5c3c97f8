"""Property tests over both ingest endpoints.

For any body and headers: never a 5xx; 202 exactly when the input is valid according to
an oracle written here from the contract (not from the service's code); every line in
the file parses and equals the ring's copy; what was stored is what was sent.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import orjson
import pytest
from conftest import EVENT_URL, SNAPSHOT_URL, read_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from metrics_service import Config, create_app

BATCH_URL = "/api/metrics/events"
MAX_BATCH = 4
MAX_BODY = 4096
MAX_EVENT = 1024
MISSING = object()

# PROPERTY_EXAMPLES=2000 for a longer hunt; 150 keeps `make test` quick.
SETTINGS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        # One app per test on purpose: examples accumulate in the same file and ring.
        HealthCheck.function_scoped_fixture,
    ],
)

# --- the oracle: the event contract, restated -------------------------------------


# Unicode's White_Space property: what the contract means by "surrounding whitespace".
WHITE_SPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def stripped(value: str) -> str:
    return value.strip(WHITE_SPACE)


# Refused in event names: C0, DEL, C1, and the invisible characters that reorder or
# hide text (Arabic letter mark, Mongolian vowel separator, zero-width and bidi
# controls, line and paragraph separators, word joiner and invisible operators, BOM).
REFUSED_RANGES = (
    (0x00, 0x1F),
    (0x7F, 0x9F),
    (0x061C, 0x061C),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x2069),
    (0xFEFF, 0xFEFF),
)


def is_control(ch: str) -> bool:
    return any(lo <= ord(ch) <= hi for lo, hi in REFUSED_RANGES)


def strict_json(body: bytes) -> tuple[bool, Any]:
    """RFC 8259 JSON in UTF-8, numbers within the double range, no lone surrogates."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    def finite(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            raise ValueError(text)
        return value

    def bounded_int(text: str) -> Any:
        return int(text) if len(text) < 300 else finite(text)

    try:
        text = body.decode("utf-8")
        value = json.loads(
            text,
            parse_constant=no_constants,
            parse_float=finite,
            parse_int=bounded_int,
        )
        json.dumps(value).encode("utf-8", "strict")
        orjson_safe = _no_surrogates(value)
    except (UnicodeError, ValueError, RecursionError):
        return False, None
    return orjson_safe, value


def _no_surrogates(value: Any) -> bool:
    if isinstance(value, str):
        return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)
    if isinstance(value, list):
        return all(_no_surrogates(v) for v in value)
    if isinstance(value, dict):
        return all(_no_surrogates(k) and _no_surrogates(v) for k, v in value.items())
    return True


def is_iso_datetime(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value


def valid_event(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    allowed = {
        "visitor_id",
        "event",
        "timestamp",
        "metadata",
        "user_agent",
        "event_id",
        "sent_at",
    }
    if set(obj) - allowed or "visitor_id" not in obj or "event" not in obj:
        return False
    visitor, name = obj["visitor_id"], obj["event"]
    if not isinstance(visitor, str) or not 6 <= len(stripped(visitor)) <= 64:
        return False
    if not isinstance(name, str) or not 1 <= len(stripped(name)) <= 64:
        return False
    if any(is_control(ch) for ch in stripped(name)):
        return False
    if not is_iso_datetime(obj.get("timestamp")) or not is_iso_datetime(
        obj.get("sent_at")
    ):
        return False
    if not isinstance(obj.get("metadata", {}), dict):
        return False
    if not isinstance(obj.get("user_agent"), (str, type(None))):
        return False
    event_id = obj.get("event_id")
    if event_id is not None and not (
        isinstance(event_id, str) and 1 <= len(event_id) <= 100
    ):
        return False
    return len(orjson.dumps(obj)) <= MAX_EVENT


# --- generators -------------------------------------------------------------------

# No whitespace or control characters inside: padding with spaces is added on purpose.
WORD = st.characters(
    exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"), exclude_characters="\x85"
)
CONTROL = st.sampled_from(
    ["\x00", "\x07", "\n", "\x1b", "\x1c", "\x7f", "\x85", "\x9f"]
)
PAD = st.sampled_from(["", " ", "  ", "\t", "\u3000", "\n "])


def padded(core: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(PAD, core, PAD).map("".join)


def datetimes() -> st.SearchStrategy[str]:
    moments = st.datetimes(dt.datetime(1971, 1, 1), dt.datetime(2099, 1, 1))
    return st.tuples(moments, st.sampled_from(["", "Z", "+02:00", "-05:30"])).map(
        lambda p: p[0].isoformat() + p[1]
    )


INT = st.integers(-(2**63), 2**63 - 1)
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
METADATA = st.dictionaries(st.text(max_size=10), JSON, max_size=5) | st.builds(
    lambda n: {"pad": "x" * n}, st.sampled_from([0, 10, 900, 1000, 1100, 4200])
)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "visitor_id": padded(st.text(WORD, min_size=6, max_size=64))
    | st.text(WORD, max_size=5)
    | st.text(WORD, min_size=65, max_size=80)
    | st.just(MISSING)
    | INT
    | st.none(),
    "event": padded(st.text(WORD, min_size=1, max_size=64))
    | st.tuples(st.text(WORD, max_size=5), CONTROL, st.text(WORD, max_size=5)).map(
        "".join
    )
    | PAD
    | st.text(WORD, min_size=65, max_size=70)
    | st.just(MISSING)
    | st.lists(INT, max_size=2),
    "timestamp": st.just(MISSING)
    | st.none()
    | datetimes()
    | st.sampled_from(["yesterday", "", "2024-02-30T00:00:00Z", "12:00"])
    | st.integers(0, 2**40)
    | st.booleans(),
    "sent_at": st.just(MISSING) | st.none() | datetimes(),
    "metadata": st.just(MISSING)
    | METADATA
    | st.lists(INT, max_size=2)
    | st.text(max_size=5)
    | st.none(),
    "user_agent": st.just(MISSING) | st.none() | st.text(max_size=30) | INT,
    "event_id": st.just(MISSING)
    | st.none()
    | st.text(min_size=1, max_size=100)
    | st.just("")
    | st.text(min_size=101, max_size=110)
    | INT,
}
EXTRA = st.none() | st.text(min_size=1, max_size=10).filter(lambda k: k not in FIELDS)


@st.composite
def event_objects(draw: st.DrawFn) -> Any:
    obj: dict[str, Any] = {}
    # Mostly-valid events: each field is broken with a small probability.
    for name, strategy in FIELDS.items():
        value = draw(strategy)
        if value is not MISSING:
            obj[name] = value
    extra = draw(EXTRA)
    if extra is not None and draw(ONE_IN_TEN):
        obj[extra] = 1
    return obj


ITEMS = event_objects() | JSON


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    obj = {
        "visitor_id": draw(padded(st.text(WORD, min_size=6, max_size=64))),
        "event": draw(padded(st.text(WORD, min_size=1, max_size=64))),
    }
    optional = {
        "metadata": METADATA,
        "user_agent": st.text(max_size=30) | st.none(),
        "event_id": st.text(min_size=1, max_size=20),
        "timestamp": datetimes(),
        "sent_at": datetimes(),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            obj[name] = draw(strategy)
    return obj


def valid_leaning_event() -> st.SearchStrategy[Any]:
    """Half the time a fully valid event, so 202 is tested as often as 4xx."""
    return valid_events() | event_objects() | JSON


def encode(value: Any) -> bytes:
    return orjson.dumps(value)


NOISE = st.sampled_from(
    [
        lambda b: b" \n" + b + b"\n",
        lambda b: b[: len(b) // 2],
        lambda b: b + b"}",
        lambda b: b.replace(b'"', b"'", 1),
        lambda b: b"\xef\xbb\xbf" + b,
        lambda b: b[:-1] + b"\xff" + b[-1:],
    ]
)
BODY_NOISE = st.sampled_from([False] * 3 + [True]).flatmap(
    lambda noisy: NOISE if noisy else st.just(lambda b: b)
)


SINGLE_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
]
NDJSON_TYPES = ["application/x-ndjson", "application/jsonl"]
BAD_TYPES = ["application/xml", "multipart/form-data; boundary=x", "image/png"]
# Hypothesis draws small integers far more often than large ones: weight by repetition.
ONE_IN_TEN = st.sampled_from([False] * 9 + [True])
ENCODINGS = [None] * 14 + ["br", "deflate", "identity", "gzip", "gzip", "x-gzip"]


@st.composite
def headers_for(draw: st.DrawFn, ndjson: bool) -> dict[str, str]:
    types = NDJSON_TYPES if ndjson else SINGLE_TYPES
    if draw(ONE_IN_TEN):
        content_type = draw(st.sampled_from(BAD_TYPES))
    else:
        content_type = draw(st.sampled_from(types))
    printable = st.characters(min_codepoint=33, max_codepoint=126)
    headers = {"User-Agent": draw(st.text(printable, max_size=30))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    encoding = draw(st.sampled_from(ENCODINGS))
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    if draw(st.booleans()):
        headers["Authorization"] = draw(
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
        )
    return headers


# --- the harness ------------------------------------------------------------------


class Harness:
    def __init__(self, client: TestClient, config: Config) -> None:
        self.client = client
        self.config = config
        self.seen_ids: set[str] = set()

    def send(self, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        wire = body
        if headers.get("Content-Encoding") in ("gzip", "x-gzip"):
            wire = gzip.compress(body)
        return self.client.post(url, content=wire, headers=headers)

    def refusal(self, body: bytes, headers: dict[str, str], ndjson: bool) -> int | None:
        """The status the transport rules demand before the JSON is looked at."""
        content_type = headers.get("Content-Type")
        if content_type in BAD_TYPES:
            return 415
        if headers.get("Content-Encoding") in ("br", "deflate"):
            return 415
        wire = (
            gzip.compress(body) if headers.get("Content-Encoding") == "gzip" else body
        )
        if len(body) > MAX_BODY or len(wire) > MAX_BODY:
            return 413
        return None

    def expect_stored(
        self, objs: list[dict[str, Any]], user_agent: str
    ) -> list[dict[str, Any]]:
        expected = []
        for obj in objs:
            event_id = obj.get("event_id")
            if event_id is not None:
                if event_id in self.seen_ids:
                    continue
                self.seen_ids.add(event_id)
            expected.append(
                {
                    "event": stripped(obj["event"]),
                    "visitor_id": stripped(obj["visitor_id"]),
                    "metadata": obj.get("metadata", {}),
                    "user_agent": obj.get("user_agent", user_agent),
                    **({"event_id": event_id} if event_id is not None else {}),
                }
            )
        return expected

    def check(
        self,
        response: httpx.Response,
        valid: bool,
        refusal: int | None,
        objs: list[dict[str, Any]],
        user_agent: str,
        lines_before: int,
    ) -> None:
        assert response.status_code < 500, response.text
        hypothesis.event(f"status {response.status_code}")
        body = response.json()
        if refusal is not None:
            assert response.status_code == refusal, body
        elif valid:
            assert response.status_code == 202, body
        else:
            assert 400 <= response.status_code < 500, body
            assert "detail" in body
        lines = read_lines(self.config.jsonl) if self.config.jsonl.exists() else []
        new = lines[lines_before:]
        if response.status_code == 202:
            expected = self.expect_stored(objs, user_agent)
            assert body["stored"] == len(expected) == len(new)
            for line, want in zip(new, expected, strict=True):
                got = {k: line[k] for k in want}
                assert got == want
        else:
            assert new == []
        snapshot = self.client.get(SNAPSHOT_URL, params={"limit": 100_000})
        assert snapshot.status_code == 200
        assert list(reversed(snapshot.json()["last_events"])) == lines
        assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))


@pytest.fixture
def harness() -> Iterator[Harness]:
    with tempfile.TemporaryDirectory() as folder:
        config = Config(
            jsonl=Path(folder) / "m.jsonl",
            ring_capacity=100_000,
            max_batch=MAX_BATCH,
            max_body_bytes=MAX_BODY,
            max_event_bytes=MAX_EVENT,
        )
        with TestClient(create_app(config)) as client:
            yield Harness(client, config)


def lines_now(harness: Harness) -> int:
    path = harness.config.jsonl
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_single_event_endpoint(harness: Harness, data: st.DataObject) -> None:
    obj = data.draw(valid_leaning_event())
    body = data.draw(BODY_NOISE)(encode(obj))
    if data.draw(ONE_IN_TEN):
        body = data.draw(st.binary(max_size=64))
    headers = data.draw(headers_for(ndjson=False))
    well_formed, parsed = strict_json(body)
    valid = well_formed and valid_event(parsed)
    before = lines_now(harness)
    response = harness.send(EVENT_URL, body, headers)
    refusal = harness.refusal(body, headers, ndjson=False)
    if refusal is None and not well_formed:
        refusal = 400
    harness.check(
        response,
        valid,
        refusal,
        [parsed] if valid else [],
        headers["User-Agent"],
        before,
    )


@pytest.mark.slow
@SETTINGS
@given(data=st.data())
def test_batch_endpoint(harness: Harness, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        objs = data.draw(st.lists(valid_events(), min_size=1, max_size=MAX_BATCH))
    else:
        objs = data.draw(st.lists(valid_leaning_event(), max_size=MAX_BATCH + 1))
    shape = data.draw(st.sampled_from(["array", "object", "ndjson"]))
    if shape == "array":
        body = encode(objs)
    elif shape == "object":
        body = encode({"events": objs})
    else:
        body = b"".join(
            encode(o) + data.draw(st.sampled_from([b"\n", b"\r\n", b"\n\n"]))
            for o in objs
        )
    body = data.draw(BODY_NOISE)(body) if shape != "ndjson" else body
    headers = data.draw(headers_for(ndjson=shape == "ndjson"))
    if shape == "ndjson":
        well_formed = True
        items = []
        for line in body.split(b"\n"):
            if line.strip():
                ok, value = strict_json(line)
                well_formed = well_formed and ok
                items.append(value)
    else:
        well_formed, parsed = strict_json(body)
        items = parsed.get("events") if isinstance(parsed, dict) else parsed
    valid = (
        well_formed
        and isinstance(items, list)
        and 1 <= len(items) <= MAX_BATCH
        and all(valid_event(item) for item in items)
    )
    before = lines_now(harness)
    response = harness.send(BATCH_URL, body, headers)
    refusal = harness.refusal(body, headers, ndjson=shape == "ndjson")
    if refusal is None and not well_formed and shape != "ndjson":
        refusal = 400
    harness.check(
        response, valid, refusal, items if valid else [], headers["User-Agent"], before
    )
