"""The Python implementations of what _speedups.c does in C, for installs without it."""

from __future__ import annotations

# A 64-bit integer has at most 20 digits, and a negative one at most 19 (-2**63 is
# -9223372036854775808): translate() then substring tests find a longer run without
# a regex.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY_DIGITS = b"0" * 20
_MINUS_NINETEEN = b"-" + b"0" * 19


def long_digits(body: bytes) -> bool:
    """True when `body` has 20 or more digits in a row, or a '-' followed by 19: a
    number that may not fit in 64 bits (the decoder then checks it exactly)."""
    digits = body.translate(_DIGITS_AS_ZERO)
    return _TWENTY_DIGITS in digits or _MINUS_NINETEEN in digits
