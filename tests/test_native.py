from __future__ import annotations

import datetime as dt
import itertools
import os
import struct
from array import array
from types import SimpleNamespace

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metrics_service import _native
from metrics_service._native import PURE_PYTHON_VAR, python

# The C module itself, whichever _native chose: these tests hold it to python.py.
# setup.py builds it optionally: here a missing compiler must fail, not slow down.
from metrics_service._native import _speedups as native
from metrics_service.store import columns
from metrics_service.store.chunk import Entry

python_lines, python_rows = python.lines, python.rows
python_bodies, python_long_digits = python.bodies, python.long_digits
long_digits = native.long_digits


def test_the_module_is_chosen_unless_switched_off() -> None:
    if os.environ.get(PURE_PYTHON_VAR):
        assert _native.c is None
        assert _native.long_digits is python.long_digits
        assert _native.index is None
    else:
        assert _native.c is native
        assert _native.long_digits is native.long_digits
        assert _native.index is native.index


def line(seq: int, **extra: object) -> bytes:
    fields: dict[str, object] = {"seq": seq, "event": "a", "visitor_id": f"v{seq}"}
    return orjson.dumps(fields | extra)


def index(*lines: bytes) -> tuple[bytes, list[int], bytes] | None:
    assert native is not None
    found = native.index(b"".join(x + b"\n" for x in lines))
    if found is None:
        return None
    text, ends, flags = found
    return text, list(array("I", ends)), flags


def test_index_joins_lines_and_flags_event_ids() -> None:
    one, two, three = line(1), line(2, event_id="e"), line(3, event_id=None)
    assert index(one, two, three) == (
        one + two + three,
        [len(one), len(one + two), len(one + two + three)],
        b"\x00\x01\x00",
    )


@pytest.mark.parametrize(
    "odd",
    [
        line(1, note="a\\b"),  # a backslash anywhere in the block
        line(1) + b" ",
        b" " + line(1),
        b"[1]",
        b"",  # a blank line
        line(1, metadata={"visitor_id": "x"}),  # the key twice
        line(1, visitor="x").replace(b'"visitor_id"', b'"visitor"'),  # no key
        line(1).replace(b'"visitor_id":', b'"visitor_id" :'),
        line(1, event_id="e", metadata={"event_id": "f"}),
        line(1, event_id="e").replace(b'"event_id":', b'"event_id": '),
        line(1, event_id=7),
        line(1, event="visitor_id"),  # the key's text as a value
    ],
)
def test_index_leaves_any_other_shape_to_python(odd: bytes) -> None:
    assert index(line(2), odd, line(3)) is None


def test_index_takes_keys_inside_other_words_as_other_keys() -> None:
    ok = line(1, product_id="p", my_event_id="x", metadata={"xvisitor_id": "y"})
    assert index(ok) == (ok, [len(ok)], b"\x00")


def test_index_reads_the_collectors_optional_keys_as_other_keys() -> None:
    lines = [
        line(1, received_at="r", instance="web-1", event_id="e", test_id="t::1"),
        line(2, instance="web_2", test_id="t"),
        line(3, instance="a_visitor_id", event_id="e", test_id="x_event_id y"),
    ]
    assert index(*lines) == (
        b"".join(lines),
        list(itertools.accumulate(map(len, lines))),
        b"\x01\x00\x01",
    )
    # A key's exact text as a value is left to Python, as for any other key.
    assert index(lines[0], line(4, instance="event_id")) is None
    assert index(lines[0], line(4, test_id="visitor_id")) is None


def test_index_needs_whole_lines() -> None:
    assert native is not None
    assert native.index(line(1)) is None
    assert native.index(b"") is None
    with pytest.raises(TypeError):
        native.index(bytearray(line(1) + b"\n"))  # type: ignore[arg-type]


def head(seq: int, stamp: str, event: str = "a", event_id: str | None = None) -> object:
    return SimpleNamespace(seq=seq, timestamp=stamp, event=event, event_id=event_id)


def test_columns_packs_seqs_times_flags_and_names() -> None:
    assert native is not None
    a, b = "click", "".join(["cli", "ck"])  # equal, but two objects
    heads = [
        head(5, "2026-01-01T00:00:00.001Z", a, "x"),
        head(2**63 - 1, "1969-12-31T23:59:59.999Z", "view"),
        head(7, "2024-02-29T12:34:56.789Z", b),
    ]
    found = native.columns(heads, {a: a, "view": "view"})
    assert found is not None
    seqs, ts, flags, codes, names, counts = found
    assert list(array("q", seqs)) == [5, 2**63 - 1, 7]
    assert list(array("d", ts)) == [1767225600.001, -0.001, 1709210096.789]
    assert (flags, list(array("H", codes)), names, counts) == (
        b"\x01\x00\x00",
        [0, 1, 0],
        ["click", "view"],
        [2, 1],
    )
    assert names[0] is a  # the one string `names` keeps for it


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-02-29T00:00:00.000Z",  # not a leap year
        "2100-02-29T00:00:00.000Z",
        "2026-04-31T00:00:00.000Z",
        "2026-13-01T00:00:00.000Z",
        "2026-00-01T00:00:00.000Z",
        "0000-01-01T00:00:00.000Z",
        "2026-01-01T24:00:00.000Z",
        "2026-01-01T00:60:00.000Z",
        "2026-01-01T00:00:60.000Z",
        "2026-01-01T00:00:00.000+",
        "2026-01-01 00:00:00.000Z",
        "2026-01-01T00:00:00.0000Z",
        "2026-01-01T00:00:00Z",
        "2026-01-0\uff11T00:00:00.000Z",  # a digit, but not ASCII
        "2026-01-01T00:00:0-.000Z",
    ],
)
def test_columns_leaves_any_other_timestamp_to_python(stamp: str) -> None:
    assert native is not None
    heads = [head(1, "2026-01-01T00:00:00.000Z"), head(2, stamp)]
    assert native.columns(heads, None) is None


def test_columns_stops_at_65536_names_a_chunk() -> None:
    assert native is not None
    stamp = "2026-01-01T00:00:00.000Z"
    heads = [head(i, stamp, f"e{i}") for i in range(65536)]
    assert native.columns(heads, None) is not None
    assert native.columns([*heads, head(0, stamp, "one more")], None) is None


def test_columns_passes_on_an_error_from_a_head() -> None:
    assert native is not None
    with pytest.raises(AttributeError):
        native.columns([SimpleNamespace(seq=1)], None)
    with pytest.raises(OverflowError):
        native.columns([head(2**64, "2026-01-01T00:00:00.000Z")], None)


@given(
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
)
def test_columns_reads_a_timestamp_as_the_full_parse_does(moment: dt.datetime) -> None:
    assert native is not None
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    stamp = stamp.rjust(24, "0")  # strftime gives years below 1000 fewer digits
    found = native.columns([head(1, stamp)], None)
    assert found is not None
    (ts,) = struct.unpack("d", found[1])
    assert ts == columns._timestamp(stamp)


def reference_index(block: bytes) -> tuple[bytes, list[int], bytes] | None:
    """What index() answers, written out with bytes methods."""
    if not block.endswith(b"\n") or b"\\" in block:
        return None
    lines = block[:-1].split(b"\n")
    flags = []
    for x in lines:
        if len(x) < 2 or x[:1] != b"{" or x[-1:] != b"}":
            return None
        if x.count(b'"visitor_id"') != 1 or x.count(b'"visitor_id":"') != 1:
            return None
        ids = x.count(b'"event_id"')
        if ids > 1 or ids > x.count(b'"event_id":"') + x.count(b'"event_id":null'):
            return None
        flags.append(x.count(b'"event_id":"'))
    ends = list(itertools.accumulate(map(len, lines)))
    return b"".join(lines), ends, bytes(flags)


TOKENS = ["{", "}", '"visitor_id"', '"event_id"', ':"', ":null", ":", '"', "_"]
TOKENS += ["a", "\\", "\n", " ", '"a_b"', '"event_id":"', '"event_id":null']
# The collector's optional keys, and values that look like keys.
TOKENS += [',"test_id":"t_1"', '"instance":"event_id"', '"test_id":"visitor_id"']
# Mostly lines that open and close like objects around one visitor_id key, so
# that about half of them are accepted.
LINES = st.lists(
    st.tuples(
        st.sampled_from(["{", "{", "{", "", " "]),
        st.lists(st.sampled_from(TOKENS), max_size=3),
        st.sampled_from(['"visitor_id":"', '"visitor_id":"', '"visitor_id" :"']),
        st.lists(st.sampled_from(TOKENS), max_size=3),
        st.sampled_from(["}", "}", "}", "", "} "]),
    ).map(lambda parts: "".join(map("".join, parts))),
    max_size=3,
)


@given(LINES, st.sampled_from(["\n", ""]))
def test_index_answers_as_the_bytes_methods_do(lines: list[str], last: str) -> None:
    assert native is not None
    block = ("\n".join(lines) + last).encode()
    found = native.index(block)
    expected = reference_index(block)
    if found is None or expected is None:
        assert found == expected
    else:
        text, ends, flags = found
        assert (text, list(array("I", ends)), flags) == expected


@given(st.binary(max_size=80) | st.text("0123456789a", max_size=80).map(str.encode))
def test_long_digits_answers_as_the_python_path_does(body: bytes) -> None:
    assert native is not None
    assert native.long_digits(body) == python_long_digits(body)


@pytest.mark.parametrize("at", [0, 1, 18, 19, 20, 21, 39, 40, 57])
@pytest.mark.parametrize("run", [19, 20, 21])
def test_long_digits_finds_a_run_wherever_it_starts(at: int, run: int) -> None:
    assert native is not None
    body = b"x" * at + b"7" * run + b"x" * (60 - at)
    assert native.long_digits(body) is (run >= 20)
    assert native.long_digits(body.rstrip(b"x")) is (run >= 20)


@given(
    st.integers(1, 2**63 - 100),
    st.binary(max_size=30),
    st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=5),
)
def test_lines_formats_as_the_python_path_does(
    first: int, received: bytes, pairs: list[tuple[bytes, bytes]]
) -> None:
    assert native is not None
    heads, bodies = [h for h, _ in pairs], [b for _, b in pairs]
    lines = native.lines(first, received, heads, bodies)
    assert lines == python_lines(first, received, heads, bodies)


def test_lines_checks_its_arguments() -> None:
    assert native is not None
    with pytest.raises(ValueError):
        native.lines(1, b"r", [b"h"], [])
    with pytest.raises(TypeError):
        native.lines(1, b"r", ["h"], [b"b"])  # type: ignore[list-item]
    with pytest.raises(OverflowError):
        native.lines(2**63 - 1, b"r", [b"h"] * 2, [b"b"] * 2)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=4,
)


@given(
    st.lists(
        st.dictionaries(st.text(max_size=8), JSON, max_size=4), min_size=1, max_size=4
    )
)
def test_bodies_splits_as_the_python_path_does(
    objects: list[dict[str, object]],
) -> None:
    assert native is not None
    encoded = msgspec.json.Encoder().encode_lines(objects)  # what plain.group() splits
    assert native.bodies(encoded) == python_bodies(encoded)


def test_bodies_takes_only_lines_of_objects() -> None:
    assert native is not None
    assert native.bodies(b'{"a":1}\n{}\n') == ([b'"a":1}', b"}"], 6)
    for bad in (b'{"a":1}\n\n', b"[1]\n"):
        with pytest.raises(ValueError):
            native.bodies(bad)


@given(st.integers(1, 2**62), st.integers(0, 5))
def test_rows_builds_entries_as_the_python_path_does(first: int, count: int) -> None:
    assert native is not None
    columns = (
        [i / 3 for i in range(count)],
        [f"e{i}" for i in range(count)],
        [f"v{i}" for i in range(count)],
        [None if i % 2 else f"id{i}" for i in range(count)],
        [b"{}" for i in range(count)],
    )
    rows = native.rows(Entry, first, columns)
    assert rows == python_rows(Entry, first, columns)
    assert all(type(row) is Entry for row in rows)


def test_rows_checks_its_arguments() -> None:
    assert native is not None
    with pytest.raises(ValueError):
        native.rows(Entry, 1, ([1.0], []))
    with pytest.raises(TypeError):
        native.rows(dict, 1, ([1.0],))  # type: ignore[type-var]
    with pytest.raises(OverflowError):
        native.rows(Entry, 2**63 - 1, ([1.0, 2.0],))


def test_event_ids_reads_each_flagged_line_and_leaves_odd_ones_to_python() -> None:
    assert native is not None
    lines = [
        line(1, event_id="a"),
        line(2),
        line(3, event_id=""),
        line(4, event_id="é"),
    ]
    text = b"".join(lines)
    ends = array("I", itertools.accumulate(map(len, lines)))
    flags = b"\x01\x00\x01\x01"
    assert native.event_ids(text, ends, flags, 0) == ["a", "é"]
    assert native.event_ids(text, ends, flags, 1) == ["é"]
    assert native.event_ids(text, ends, flags, 4) == []
    assert native.event_ids(text, ends, b"\x01\x00\x03\x01", 0) is None
    assert native.event_ids(text, array("Q", ends), flags, 0) is None
    with pytest.raises(ValueError):
        native.event_ids(text, ends, b"\x01\x01\x01\x01", 0)  # line 2 has none
    with pytest.raises(ValueError):
        native.event_ids(text, ends, flags[:3], 0)


class SlottedHead:
    __slots__ = ("event", "event_id", "seq", "timestamp")


def test_columns_reads_slots_directly_and_an_empty_one_still_raises() -> None:
    assert native is not None
    heads = []
    for seq in (1, 2):
        slotted = SlottedHead()
        slotted.seq, slotted.timestamp = seq, "2026-01-01T00:00:00.000Z"
        slotted.event, slotted.event_id = "a", None if seq == 1 else "x"
        heads.append(slotted)
    mixed = [heads[0], head(3, "2026-01-01T00:00:00.000Z", "b"), heads[1]]
    found = native.columns(mixed, None)
    assert found is not None
    assert list(array("q", found[0])) == [1, 3, 2]
    assert (found[2], found[4], found[5]) == (b"\x00\x00\x01", ["a", "b"], [2, 1])
    del heads[1].event_id
    with pytest.raises(AttributeError):
        native.columns(heads, None)


@pytest.mark.parametrize("at", [0, 1, 18, 19, 20, 21, 39, 40, 57])
@pytest.mark.parametrize("run", [18, 19, 20])
def test_long_digits_finds_a_minus_and_19_digits_wherever_it_starts(
    at: int, run: int
) -> None:
    assert native is not None
    body = b"x" * at + b"-" + b"7" * run + b"x" * (60 - at)
    for each in (body, body.rstrip(b"x"), body.lstrip(b"x")):
        assert native.long_digits(each) is (run >= 19)
        assert python_long_digits(each) is (run >= 19)


@given(st.text("0123456789-x", max_size=90).map(str.encode))
def test_long_digits_with_minus_signs_answers_as_the_python_path_does(
    body: bytes,
) -> None:
    assert native is not None
    assert native.long_digits(body) == python_long_digits(body)


HEADER_NAMES = st.sampled_from(
    [b"x-metrics-test-id", b"cookie", b"host", b"x-metrics-test-i", b"cookies", b""]
)
HEADER_VALUES = st.sampled_from(
    [b"", b"t", b"metrics_test_id=a", b"a=1; metrics_test_id=b", b"metrics_test_i"]
)
HEADER_ITEMS = st.tuples(HEADER_NAMES, HEADER_VALUES) | st.sampled_from(
    [[b"cookie", b"metrics_test_id=l"], (b"cookie",), ("cookie", "metrics_test_id=s")]
)


@given(st.lists(HEADER_ITEMS, max_size=6))
def test_carriers_finds_what_the_python_path_finds(headers: list[object]) -> None:
    assert native is not None
    args = (b"x-metrics-test-id", b"metrics_test_id")
    assert native.carriers(headers, *args) == python.carriers(headers, *args)
    assert native.carriers(tuple(headers), *args) == python.carriers(headers, *args)


def test_carriers_answers_none_without_either() -> None:
    assert native is not None
    headers = [(b"host", b"h"), (b"cookie", b"session=1")]
    assert native.carriers(headers, b"x-metrics-test-id", b"metrics_test_id") is None
    with pytest.raises(TypeError):
        native.carriers(7, b"x", b"y")
