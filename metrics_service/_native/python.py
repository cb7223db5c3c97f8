"""The Python implementations of what _speedups.c does in C, for installs without it."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import repeat
from typing import Any

from metrics_service.store.line import LINE

# A 64-bit integer has at most 20 digits, and a negative one at most 19 (-2**63 is
# -9223372036854775808): translate() then substring tests find a longer run without
# a regex.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS = b"0" * 20
_MINUS_NINETEEN = b"-" + b"0" * 19
_new = tuple.__new__  # skips NamedTuple's keyword-handling __new__


def long_digits(body: bytes) -> bool:
    """True when `body` has 20 or more digits in a row, or a '-' followed by 19: a
    number that may not fit in 64 bits (the decoder then checks it exactly)."""
    digits = body.translate(_DIGITS_AS_ZERO)
    return _TWENTY_DIGITS in digits or _MINUS_NINETEEN in digits


def bodies(encoded: bytes) -> tuple[list[bytes], int]:
    """msgspec's encode_lines() output as each event's body (from its first key to its
    last "}"), and the longest one's length."""
    # Each line is `{…}`; a raw newline is always escaped inside one, so "\n{" splits
    # them exactly.
    parts = encoded[1:-1].split(b"\n{")
    return parts, max(map(len, parts))


def lines(
    first: int, received: bytes, heads: list[bytes], bodies: list[bytes]
) -> list[bytes]:
    """Stored lines, without newlines, with seqs counting up from `first`."""
    seqs = range(first, first + len(bodies))
    return list(map(LINE.__mod__, zip(seqs, repeat(received), heads, bodies)))


def rows(cls: Any, first: int, columns: tuple[list[Any], ...]) -> list[Any]:
    """cls((first + i, *(column[i] for column in columns))) for each i."""
    seqs = range(first, first + len(columns[0]))
    return list(map(_new, repeat(cls), zip(seqs, *columns, strict=True)))


def carriers(
    headers: Iterable[Any], name: bytes, needle: bytes
) -> tuple[list[bytes], list[bytes]] | None:
    """The values of the header `name`, and the `cookie` values holding `needle`, in
    order; None when there are neither. Pairs that are not two bytes are passed over."""
    values: list[bytes] = []
    cookies: list[bytes] = []
    for item in headers:
        if type(item) not in (tuple, list) or len(item) != 2:
            continue
        key, value = item
        if type(key) is not bytes or type(value) is not bytes:
            continue
        if key == name:
            values.append(value)
        elif key == b"cookie" and needle in value:
            cookies.append(value)
    return (values, cookies) if values or cookies else None
