# The C module _speedups.c; see its docstrings.

from array import array
from typing import Any, TypeVar

_T = TypeVar("_T", bound=tuple[Any, ...])

def index(block: bytes, /) -> tuple[bytes, bytes, bytes] | None: ...
def columns(
    heads: list[Any], names: dict[str, str] | None, /
) -> tuple[bytes, bytes, bytes, bytes, list[str], list[int]] | None: ...
def long_digits(body: bytes, /) -> bool: ...
def event_ids(
    text: bytes, ends: array[int], flags: bytes, lo: int, /
) -> list[str] | None: ...
