# The C module _replay.c; see its docstrings.

from typing import Any

def index(block: bytes, /) -> tuple[bytes, bytes, bytes] | None: ...
def columns(
    heads: list[Any], names: dict[str, str] | None, /
) -> tuple[bytes, bytes, bytes, bytes, list[str], list[int]] | None: ...
