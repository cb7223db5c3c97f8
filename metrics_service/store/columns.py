"""Stored lines read back into ring columns: a block at a time by msgspec (and C, see
_native), or line by line for a block with a line that needs judging."""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import re
from array import array
from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

import msgspec
import orjson

from metrics_service import _native
from metrics_service.store.chunk import ODD, Columns, Entry, Packed, readback


def parse_entry(line: bytes) -> tuple[int | None, Entry | None]:
    """The line's seq (None when unreadable) and its ring entry (None when incomplete)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None
    seq = obj.get("seq") if isinstance(obj, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None, None
    if not -(2**63) <= seq < 2**63:  # the ring keeps seqs as 64-bit ints
        return None, None
    event, visitor_id, event_id = (
        obj.get(k) for k in ("event", "visitor_id", "event_id")
    )
    if not (isinstance(event, str) and isinstance(visitor_id, str)):
        return seq, None
    try:
        ts = _timestamp(obj.get("timestamp"))
    except (TypeError, ValueError):
        return seq, None
    if not isinstance(event_id, str):
        event_id = None
    return seq, Entry(seq, ts, event, visitor_id, event_id, line)


def why_skipped(line: bytes) -> str | None:
    """Why replay skips `line` (parse_entry's judgement in words); None if it does not."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line.strip():
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc.msg})"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return "no integer seq"
    if not -(2**63) <= seq < 2**63:
        return "seq beyond 64 bits"
    for key in ("event", "visitor_id"):
        if not isinstance(obj.get(key), str):
            return f"no {key} string"
    try:
        _timestamp(obj.get("timestamp"))
    except (TypeError, ValueError):
        return "no ISO-8601 timestamp"
    return None


def _timestamp(raw: object) -> float:
    if not isinstance(raw, str):
        raise TypeError("timestamp")
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()


def scan(
    lines: Iterable[bytes], need: int, last_seq: int
) -> tuple[list[Entry], int, int]:
    """replay()'s loop: up to `need` entries newest first, the last seq, skipped lines."""
    found: list[Entry] = []
    skipped = 0
    for line in lines:
        if line.endswith(b"\r"):  # a sink edited with CRLF line endings
            line = line[:-1]
        if not line.strip():
            continue
        seq, entry = parse_entry(line)
        if seq is not None and seq > last_seq:
            last_seq = seq
        if len(found) >= need and last_seq:
            break
        if entry is None:
            skipped += 1
        elif len(found) < need:
            found.append(entry)
    return found, last_seq, skipped


_Seq = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class _Head(msgspec.Struct, gc=False):
    """What the ring needs of a stored line; the rest is checked as JSON and skipped.

    Skipped numbers are not converted: one beyond float range (1e400), which orjson
    rejects, passes here. The service never writes one.
    """

    seq: _Seq
    timestamp: str
    event: str
    visitor_id: str
    event_id: str | None = None


_DECODER = msgspec.json.Decoder(_Head)
# Event names known in advance are decoded as a Literal: msgspec hands back the one
# string object per name, with no new string and no interning pass per line.
_NAMED = 256  # names beyond this keep the plain decoder
_SECOND = re.compile("[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
_MILLIS = {f".{ms:03d}Z": ms for ms in range(1000)}
_second = operator.itemgetter(slice(19))
_milli = operator.itemgetter(slice(19, None))
_seq_of = operator.attrgetter("seq")
_timestamp_of = operator.attrgetter("timestamp")
_event_of = operator.attrgetter("event")
_event_id_of = operator.attrgetter("event_id")
_first = operator.itemgetter(0)
_last = operator.itemgetter(-1)


def empty() -> Columns:
    return Columns(array("q"), array("d"), [], bytearray(), {}, [])


def add_entry(columns: Columns, entry: Entry) -> None:
    flag = readback(entry.visitor_id, entry.event_id, entry.line)
    if flag & ODD:
        columns.odd[len(columns.seqs)] = (entry.visitor_id, entry.event_id)
    columns.seqs.append(entry.seq)
    columns.ts.append(entry.ts)
    columns.events.append(entry.event)
    columns.flags.append(flag)
    columns.lines.append(entry.line)


def extend_columns(columns: Columns, more: Columns) -> None:
    base = len(columns.seqs)
    columns.odd.update((base + i, v) for i, v in more.odd.items())
    columns.seqs.extend(more.seqs)
    columns.ts.extend(more.ts)
    columns.events.extend(more.events)
    columns.flags.extend(more.flags)
    columns.lines.extend(more.lines)


class _Bases(dict[str, int]):
    """ "YYYY-MM-DDTHH:MM:SS" → epoch ms (UTC), worked out on first use; KeyError
    for anything else."""

    def __missing__(self, second: str) -> int:
        if not _SECOND.fullmatch(second):
            raise KeyError(second)
        try:
            moment = dt.datetime.fromisoformat(second + "+00:00")
        except ValueError:
            raise KeyError(second) from None
        base = self[second] = int(moment.timestamp()) * 1000
        return base


class Parser:
    """Blocks of whole lines into columns: one msgspec call per block, or parse_entry
    line by line for a block that has any line it rejects (the same result, slower)."""

    def __init__(self) -> None:
        self.bases = _Bases()
        self.names: dict[str, str] = {}  # one string object per event name
        self.decoder: msgspec.json.Decoder[Any] | None = None  # events as a Literal

    def block(self, block: bytes) -> tuple[Columns | Packed, int, int]:
        """The block's entries (oldest first), its highest seq, and its skipped lines."""
        try:
            if not block.isascii():
                block.decode()  # orjson would reject the line: so must we
            heads, named = self._decode(block)
        except (UnicodeDecodeError, msgspec.DecodeError):  # incl. ValidationError
            heads, named = [], False
        if heads and _native.index is not None:
            packed = self._packed(block, heads, named)
            if packed is not None:
                return packed, max(packed.seqs), 0
        lines = block.split(b"\n")
        lines.pop()  # the nothing after the final newline
        if not heads:
            return self._slow(lines)
        columns = self._columns(block, lines, heads, named)
        if columns is None:
            return self._slow(lines)
        return columns, max(columns.seqs), 0

    def _decode(self, block: bytes) -> tuple[list[_Head], bool]:
        """The block's heads, and whether their events are already one object per name."""
        if self.decoder is not None:
            try:
                named: list[_Head] = self.decoder.decode_lines(block)
                return named, True
            except msgspec.ValidationError:
                pass  # a new name, or a bad line: the plain decoder tells which
        heads = _DECODER.decode_lines(block)
        names = self.names
        known = len(names)
        for name in set(map(_event_of, heads)).difference(names):
            names[name] = name
        if len(names) != known or self.decoder is None:
            self.decoder = None
            if 0 < len(names) <= _NAMED:
                kind: Any = Literal[tuple(names)]
                # typing caches Literal types by value: its strings are the ones
                # msgspec hands back, so they become the names.
                self.names = {name: name for name in get_args(kind)}
                self.decoder = _named_decoder(kind)
        return heads, False

    def _packed(self, block: bytes, heads: list[_Head], named: bool) -> Packed | None:
        """The block as a ring chunk, in C; None for a line it leaves to Python."""
        assert _native.index is not None and _native.columns is not None
        lines = _native.index(block)
        if lines is None:
            return None
        found = _native.columns(heads, None if named else self.names)
        if found is None:
            return None
        text, ends, flags = lines
        seqs, ts, id_flags, codes, names, counts = found
        # index() saw one {...} per line and columns() one head per value: equal
        # counts make them the same lines, and equal flags the same event_ids.
        if len(flags) != len(heads) or id_flags != flags:
            return None
        return Packed(
            _array("q", seqs), _array("d", ts), flags, codes, names, counts,
            text, _array("I", ends),
        )  # fmt: skip

    def _columns(
        self, block: bytes, lines: list[bytes], heads: list[_Head], named: bool
    ) -> Columns | None:
        """The columns, or None when a line needs parse_entry's judgement."""
        count = len(heads)
        # Every line opening with "{" and closing with "}" means no value spans a
        # newline, so with as many values as lines each line is one JSON object.
        try:
            if count != len(lines) or bytes(map(_first, lines)) != b"{" * count:
                return None
            if bytes(map(_last, lines)) != b"}" * count:
                return None
        except IndexError:  # a blank line
            return None
        ts = self._times(list(map(_timestamp_of, heads)))
        if ts is None:
            return None
        event_ids = list(map(_event_id_of, heads))
        flags = bytearray(map(operator.is_not, event_ids, itertools.repeat(None)))
        odd: dict[int, tuple[str, str | None]] = {}
        # The ring reads visitor_id / event_id back from the first `"visitor_id":"`
        # / `"event_id":"` of a line. With no backslash, each line holding just the
        # one `"visitor_id"` and (if set) `"event_id"` string, and each followed by
        # `:"`, those are the top-level keys with their raw values. Lines with a
        # backslash are checked one by one.
        plain, keys, ids = block, count, flags.count(1)
        checked: Iterable[int] = ()
        if b"\\" in block:
            checked = [i for i, line in enumerate(lines) if b"\\" in line]
            escaped = set(checked)
            plain = b"\n".join(x for i, x in enumerate(lines) if i not in escaped)
            keys -= len(checked)
            ids -= sum(flags[i] for i in checked)
        if (
            plain.count(b'"visitor_id"') != keys
            or plain.count(b'"visitor_id":"') != keys
            or plain.count(b'"event_id"') != ids
            or plain.count(b'"event_id":"') != ids
        ):
            checked = range(count)
        for i in checked:
            head = heads[i]
            flag = flags[i] = readback(head.visitor_id, head.event_id, lines[i])
            if flag & ODD:
                odd[i] = (head.visitor_id, head.event_id)
        seqs = array("q", map(_seq_of, heads))
        events = list(map(_event_of, heads))
        if not named:
            names = self.names
            events = list(map(names.get, events, events))
        return Columns(seqs, ts, events, flags, odd, lines)

    def _times(self, stamps: list[str]) -> array[float] | None:
        """Unix seconds for "YYYY-MM-DDTHH:MM:SS.mmmZ" stamps; None if one is not one."""
        try:
            # An exact integer over 1000 rounds just as datetime.timestamp() does.
            return array(
                "d",
                map(
                    operator.truediv,
                    map(
                        operator.add,
                        map(self.bases.__getitem__, map(_second, stamps)),
                        map(_MILLIS.__getitem__, map(_milli, stamps)),
                    ),
                    itertools.repeat(1000),
                ),
            )
        except KeyError:
            return None

    def _slow(self, lines: list[bytes]) -> tuple[Columns, int, int]:
        # scan keeps the lines' order, and stops early only once it has `need`.
        found, top, skipped = scan(lines, len(lines), 0)
        out = empty()
        for entry in found:
            add_entry(out, entry)
        return out, top, skipped


def _array(typecode: str, data: bytes) -> array[Any]:
    out = array(typecode)
    out.frombytes(data)
    return out


def _named_decoder(names: Any) -> msgspec.json.Decoder[Any]:
    """_DECODER, with `event` of type `names` (a Literal)."""
    head = msgspec.defstruct(
        "_NamedHead",
        [
            ("seq", _Seq),
            ("timestamp", str),
            ("event", names),
            ("visitor_id", str),
            ("event_id", str | None, None),
        ],
        gc=False,
    )
    return msgspec.json.Decoder(head)
