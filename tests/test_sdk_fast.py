"""The SDK formats' fast mappings in C (_native segment_events, posthog_events) against
the declared ones (segment.py and posthog.py _map, then fast.convert): on generated
and recorded bodies they make the same events, decline exactly where the declared
path refuses or the decoder's fast path declines, and store the same lines."""

from __future__ import annotations

import base64
import gc
import sys
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from perf import formats

from metrics_service import Config, _native
from metrics_service.http.body import read_head
from metrics_service.http.errors import ApiError
from metrics_service.ingest import fast
from metrics_service.ingest.clock import received_now
from metrics_service.ingest.decode import parse_json
from metrics_service.ingest.formats import posthog, segment
from metrics_service.ingest.formats.lane import Foreign, SdkLane, inflate, query_of
from metrics_service.service import Service

# C against the declared mapping: the first pass of make test, where C is in use (the
# second, METRICS_PURE_PYTHON=1, has no C to compare and leaves `once` tests out).
pytestmark = pytest.mark.once


@pytest.fixture(autouse=True)
def _c_in_use() -> None:
    if _native.segment_events is None:
        pytest.fail(
            "the C module is not in use: build it, and unset METRICS_PURE_PYTHON"
        )


FIXTURES = Path(__file__).with_name("fixtures") / "sdk"
ANON = "5c1e3a7e-9d41-4b8e-a0f2-1f6e2d3c4b5a"
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
# Mostly what SDKs send, and the edges of each rule the decoder checks.
_ids = st.sampled_from(
    [None, "", "abc", "v-8f3a2c91d4", ANON, " padded-id ", "x" * 64, "x" * 65,
     "é" * 6, "😀" * 64, 0, 1234567, -(2**63), True, [], {}]
) | st.text(max_size=70)  # fmt: skip
_names = st.sampled_from(
    ["page_view", "Signed Up", "", " x", "x" * 64, "x" * 65, "a\x00b", "😀" * 64,
     "$pageview", "$identify", "$set", None, 5, ["x"]]
) | st.text(max_size=66)  # fmt: skip
_times = st.sampled_from(
    [None, "2026-12-03T12:00:00.000Z", "2026-12-03T12:00:00+01:00",
     "2026-12-03T12:00:00", "not a time", 1700000000, "2026-13-40T00:00:00Z", ""]
)  # fmt: skip
_message_ids = st.sampled_from(
    [None, "", "m-1", "x" * 100, "x" * 101, 5, ANON]
) | st.uuids().map(str)  # fmt: skip
_agents = st.sampled_from(
    [None, "Mozilla/5.0", "", "a" * 513, "é" * 600, 7, {"ua": "x"}]
)  # fmt: skip
_objects = st.dictionaries(
    st.sampled_from(["plan", "w", "$sdk", "token", "", "ü", "$set"])
    | st.text(max_size=4),
    _json,
    max_size=4,
)
_metadata = _objects | _json


def _maybe(**fields: Any) -> Any:
    return st.fixed_dictionaries({}, optional=fields)


_context = _maybe(
    page=_maybe(url=_json, title=_json, path=_json, referrer=_json, search=_json)
    | _json,
    library=_maybe(name=_json, version=_json) | _json,
    userAgent=_agents,
    traits=_metadata,
    locale=_json,
)
_segment_call = _maybe(
    type=st.sampled_from(["track", "page", "screen", "identify", "group", "alias"])
    | _names,
    event=_names,
    anonymousId=_ids,
    userId=_ids,
    messageId=_message_ids,
    timestamp=_times,
    originalTimestamp=_times,
    sentAt=_times,
    properties=_metadata,
    traits=_metadata,
    context=_context | _json,
    name=_json,
    groupId=_json,
    previousId=_json,
    writeKey=_json,
    integrations=_json,
)
# Whole batches the fast mapping takes, but for the odd field: one call it declines
# declines the batch.
_segment_plain_call = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "page", "identify", "alias"]),
        "event": st.sampled_from(["page_view", "Signed Up"]),
        "anonymousId": st.sampled_from([ANON, "v-8f3a2c91d4", None]),
        "userId": st.sampled_from(["user-123456", None, ""]),
        "messageId": _message_ids,
    }
).flatmap(
    lambda plain: _segment_call.map(
        lambda extra: {**plain, **dict(list(extra.items())[:2])}
    )
)
_segment_batch = _maybe(sentAt=_times, writeKey=_json).flatmap(
    lambda outer: (
        st.lists(_segment_call | _json, max_size=5)
        | st.lists(_segment_plain_call, min_size=1, max_size=5)
    ).map(lambda calls: {"batch": calls, **outer})
)
_posthog_properties = _maybe(
    distinct_id=_ids,
    token=_json,
    title=_json,
    **{
        "$current_url": _json,
        "$pathname": _json,
        "$referrer": _json,
        "$lib": _json,
        "$lib_version": _json,
        "$raw_user_agent": _agents,
        "$set": _json,
        "$sdk": _json,
    },
).flatmap(lambda known: _objects.map(lambda extra: {**extra, **known}))
_posthog_event = _maybe(
    event=_names,
    distinct_id=_ids,
    uuid=_message_ids,
    timestamp=_times,
    sent_at=_times,
    offset=st.sampled_from([None, 0, 1500, -1, 10**12, 1.5, "5"]),
    properties=_posthog_properties | _json,
    api_key=_json,
    token=_json,
    type=_json,
    **{"$set": _json, "$set_once": _json},
)
_posthog_plain_event = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["$pageview", "page_view", "$identify"]),
        "distinct_id": st.sampled_from([ANON, "v-8f3a2c91d4", 12345678]),
        "uuid": _message_ids,
        "properties": _posthog_properties,
    }
).flatmap(
    lambda plain: _posthog_event.map(
        lambda extra: {**plain, **dict(list(extra.items())[:2])}
    )
)
_posthog_body = (
    _maybe(api_key=_json, sent_at=_times).flatmap(
        lambda outer: (
            st.lists(_posthog_event | _json, max_size=5)
            | st.lists(_posthog_plain_event, min_size=1, max_size=5)
        ).map(lambda events: {"batch": events, **outer})
    )
    | st.lists(_posthog_event | _json, max_size=5)
    | _posthog_event
)


def _same(events: list[Any] | None, reference: list[Any] | None) -> None:
    assert (events is None) == (reference is None), (events, reference)
    if events is not None:
        assert events == reference
        assert msgspec.json.encode(events) == msgspec.json.encode(reference)


def _segment_reference(messages: list[Any], call: str | None, sent_at: Any) -> Any:
    items = [segment._map(message, call, sent_at) for message in messages]
    if any(item.problems for item in items):
        return None
    return fast.convert([item.event for item in items])


def _segment_fast(messages: list[Any], call: str | None, sent_at: Any) -> Any:
    assert _native.segment_events is not None
    return _native.segment_events(messages, call, sent_at, segment._FAST_SPEC)


def _posthog_items(data: Any) -> tuple[list[Any], Any]:
    if isinstance(data, dict) and isinstance(data.get("batch"), list):
        return data["batch"], data.get("sent_at")
    return (data if isinstance(data, list) else [data]), None


def _posthog_reference(items: list[Any], sent_at: Any) -> Any:
    now = received_now().moment
    return fast.convert([posthog._map(item, sent_at, now).event for item in items])


def _posthog_found(items: list[Any], sent_at: Any) -> Any:
    assert _native.posthog_events is not None
    return _native.posthog_events(items, sent_at, posthog._FAST_SPEC)


def _posthog_fast(items: list[Any], sent_at: Any) -> Any:
    found = _posthog_found(items, sent_at)
    return None if found is None else found[0]


def _posthog_keys(items: list[Any]) -> list[tuple[str, object]]:
    """The SDK keys the declared path finds in the events."""
    saved = _native.posthog_events
    _native.posthog_events = None
    try:
        return posthog.mapped(items, None, RECEIVED, True, []).keys
    finally:
        _native.posthog_events = saved


def _offset_only(item: Any) -> bool:
    """An event whose time the declared path works out from `offset` and now."""
    return (
        isinstance(item, dict)
        and item.get("timestamp") is None
        and type(item.get("offset")) is int
    )


@pytest.mark.slow
@SETTINGS
@given(_segment_batch)
def test_segment_batches_map_as_declared(batch: dict[str, Any]) -> None:
    body = orjson.dumps(batch)
    for read in (segment.read_batch, segment.read_batch_loosely):
        try:
            messages, sent_at, _ = read(body)
        except ApiError:
            return  # refused before mapping, on both paths
        _same(
            _segment_fast(messages, None, sent_at),
            _segment_reference(messages, None, sent_at),
        )


@SETTINGS
@given(
    _segment_call,
    st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]),
)
def test_segment_calls_map_as_declared(call: dict[str, Any], kind: str) -> None:
    message = segment.read_call(orjson.dumps(call))
    _same(
        _segment_fast([message], kind, None), _segment_reference([message], kind, None)
    )


@pytest.mark.slow
@SETTINGS
@given(_posthog_body)
def test_posthog_events_map_as_declared(data: Any) -> None:
    items, sent_at = _posthog_items(parse_json(orjson.dumps(data)))
    found = _posthog_found(items, sent_at)
    if found is None and any(map(_offset_only, items)):
        return  # declined: only the declared path knows now
    _same(None if found is None else found[0], _posthog_reference(items, sent_at))
    if found is not None:
        assert found[1] == _posthog_keys(items)


def test_an_offset_is_left_to_the_declared_path() -> None:
    item = {"event": "$pageview", "distinct_id": ANON, "offset": 1500}

    assert _posthog_fast([item], None) is None
    assert _posthog_reference([item], None) is not None


@pytest.mark.parametrize(
    "body",
    [
        b'{"batch":[{"type":"track","event":"a","anonymousId":"abcdef","properties":{"$sdk":1,"b":2}}]}',
        b'{"batch":[{"type":"identify","userId":123456,"anonymousId":"","traits":null,"context":{"traits":{"t":1}}}]}',
        b'{"batch":[{"type":"alias","userId":"abcdef","previousId":"old","properties":{"p":1}}]}',
        b'{"batch":[{"type":"page","anonymousId":0,"userId":"abcdef","name":"Home","context":{"page":{"url":null,"title":"T"}}}]}',
        b'{"batch":[{"type":"track","event":"a","anonymousId":"abcdef","timestamp":null,"originalTimestamp":"2026-12-03T12:00:00Z","sentAt":null}],"sentAt":"2026-12-03T12:00:01Z"}',
        b'{"batch":[{"type":"track","event":"a","anonymousId":"abcdef","messageId":null}]}',
        b'{"batch":[{"type":"track","event":"a","anonymousId":"abcdef","properties":{"n":18446744073709551615,"u":"\\u00e9\\ud83d\\ude00"}}]}',
        b'{"batch":[{"type":"track","event":"a","anonymousId":"abcdef","properties":[1]}]}',
        b'{"batch":[{"type":"Track","event":"a","anonymousId":"abcdef"}]}',
        b'{"batch":[1,{"type":"track","event":"a","anonymousId":"abcdef"}]}',
        b'{"batch":[]}',
    ],
)
def test_segment_edges_map_as_declared(body: bytes) -> None:
    messages, sent_at, _ = segment.read_batch(body)

    _same(
        _segment_fast(messages, None, sent_at),
        _segment_reference(messages, None, sent_at),
    )


@pytest.mark.parametrize(
    "data",
    [
        {"event": "e", "distinct_id": 1234567, "properties": {"token": "t", "$set": 1}},
        {"event": "e", "distinct_id": ANON, "api_key": "k", "token": None},
        {"event": "e", "distinct_id": None, "properties": {"distinct_id": ANON}},
        {"event": "e", "properties": {"distinct_id": None}, "distinct_id": None},
        {"event": "e", "distinct_id": ANON, "$set": {"a": 1}, "$set_once": None},
        {"event": "e", "distinct_id": ANON, "sent_at": None},
        {"event": "e", "distinct_id": ANON, "properties": None, "uuid": None},
        {"event": "e", "distinct_id": True},
        {"event": "e", "distinct_id": 12345},
        {"event": 5, "distinct_id": ANON},
        {
            "event": "e",
            "distinct_id": ANON,
            "properties": {"$raw_user_agent": "é" * 600},
        },
        {"event": "e", "distinct_id": ANON, "timestamp": None, "offset": True},
        [{"event": "e", "distinct_id": ANON}, 5],
        [],
    ],
)
def test_posthog_edges_map_as_declared(data: Any) -> None:
    items, sent_at = _posthog_items(data)
    found = _posthog_found(items, sent_at)

    _same(None if found is None else found[0], _posthog_reference(items, sent_at))
    assert found is None or found[1] == _posthog_keys(items)


def test_what_the_sdks_send_takes_the_fast_mapping() -> None:
    messages, sent_at, _ = segment.read_batch(formats.segment())
    events = _segment_fast(messages, None, sent_at)
    assert events is not None
    _same(events, _segment_reference(messages, None, sent_at))

    items, sent_at = _posthog_items(orjson.loads(formats.posthog()))
    events = _posthog_fast(items, sent_at)
    assert events is not None
    _same(events, _posthog_reference(items, sent_at))


RECEIVED = received_now()
SERVICE = Service(Config(jsonl=Path("/nonexistent/m.jsonl")))


def _decoded(lane: SdkLane, body: bytes, query: bytes = b"") -> Any:
    """What the lane makes of a body: the group it stores, or its refusal."""
    scope = {"type": "http", "headers": [(b"user-agent", b"agent/1")]}
    scope["query_string"] = query
    request = Foreign(
        scope, read_head(scope["headers"]), body, query_of(scope), RECEIVED
    )
    try:
        return lane.decode(lane.payload(request), SERVICE, request, "tag-1")
    except ApiError as exc:
        return exc.status_code, exc.detail


def _without_c(lane: SdkLane, body: bytes, query: bytes = b"") -> Any:
    saved = _native.segment_events, _native.posthog_events
    _native.segment_events = _native.posthog_events = None
    try:
        return _decoded(lane, body, query)
    finally:
        _native.segment_events, _native.posthog_events = saved


def _lane(path: str) -> SdkLane | None:
    if path.startswith("/posthog"):
        capture = path.removeprefix(posthog.PREFIX) in posthog.CAPTURE_PATHS
        return posthog.PostHogLane() if capture else None
    tail = path.removeprefix(segment.PREFIX + "/")
    if tail in ("b", "batch"):
        return segment.SegmentLane(None)
    return segment.SegmentLane(segment.CALLS[tail]) if tail in segment.CALLS else None


@pytest.mark.parametrize(
    "fixture",
    [
        "segment_analytics_next",
        "segment_analytics_next_batching",
        "rudderstack_analytics_js",
        "posthog_js",
        "posthog_js_no_compression",
    ],
)
def test_the_recorded_sdk_requests_take_the_fast_mapping(fixture: str) -> None:
    recording = orjson.loads((FIXTURES / f"{fixture}.json").read_bytes())
    taken = 0
    for request in recording["requests"]:
        lane = _lane(request["path"])
        if request["method"] != "POST" or lane is None:
            continue
        if "body_base64" in request:
            body = base64.b64decode(request["body_base64"])
        else:
            body = request.get("body", "").encode()
        body, query = inflate(body, 10**8), request["query"].encode()
        scope = {"type": "http", "headers": [], "query_string": query}
        foreign = Foreign(scope, read_head([]), body, query_of(scope), RECEIVED)
        taken += lane.payload(foreign).premapped is not None
        assert _decoded(lane, body, query) == _without_c(lane, body, query)
    assert taken > 0


@pytest.mark.slow
@SETTINGS
@given(_segment_batch)
def test_a_segment_batch_is_stored_as_without_c(batch: dict[str, Any]) -> None:
    body = orjson.dumps(batch)
    lane = segment.SegmentLane(None)

    assert _decoded(lane, body) == _without_c(lane, body)


@pytest.mark.slow
@SETTINGS
@given(_posthog_body)
def test_a_posthog_body_is_stored_as_without_c(data: Any) -> None:
    body = orjson.dumps(data)
    lane = posthog.PostHogLane()

    assert _decoded(lane, body) == _without_c(lane, body)


def test_the_fast_mappings_keep_their_references() -> None:
    segment_body = formats.segment()
    posthog_data = orjson.loads(formats.posthog())
    messages, sent_at, _ = segment.read_batch(segment_body)
    declined = segment.read_batch(
        b'{"batch":[{"type":"track","anonymousId":"abcdef"}]}'
    )
    watched = [messages[0], messages[0].properties, sent_at, posthog_data["batch"][0]]
    before = [sys.getrefcount(x) for x in watched]

    def run(times: int) -> None:
        for _ in range(times):
            _segment_fast(messages, None, sent_at)
            _segment_fast(declined[0], None, None)
            _posthog_fast(posthog_data["batch"], posthog_data["sent_at"])
            _posthog_fast([{"event": "e", "distinct_id": 5}], None)

    run(10)
    gc.collect()
    blocks = sys.getallocatedblocks()
    run(1000)
    gc.collect()
    # A leak of one object a call would be thousands of blocks.
    assert sys.getallocatedblocks() - blocks < 100
    assert [sys.getrefcount(x) for x in watched] == before
