"""The one place that picks C or Python for the per-line work.

The C extension (_speedups.c) is optional: a package built without a compiler, or a
process started with METRICS_PURE_PYTHON=1, uses the Python implementations in
python.py, which give the same results (tests/test_native.py proves it), slower.
`index`, `columns` and `event_ids` are None without C: their callers then take the
path they also take for a line C leaves to them; so are `segment_events` and
`posthog_events`, the SDK formats' fast mappings, whose Python path is the formats'
declared mapping (tests/test_sdk_fast.py proves them the same).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from metrics_service._native import python
from metrics_service.settings import PURE_PYTHON_VAR


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_VAR, "").strip().lower() in ("1", "true", "yes"):
        return None
    try:
        from metrics_service._native import _speedups
    except ImportError:
        return None
    return _speedups


c = _load()

long_digits: Callable[[bytes], bool] = python.long_digits
bodies: Callable[[bytes], tuple[list[bytes], int]] = python.bodies
lines: Callable[[int, bytes, list[bytes], list[bytes]], list[bytes]] = python.lines
rows: Callable[[Any, int, tuple[list[Any], ...]], list[Any]] = python.rows
carriers: Callable[[Any, bytes, bytes], tuple[list[bytes], list[bytes]] | None] = (
    python.carriers
)
index: Callable[[bytes], tuple[bytes, bytes, bytes] | None] | None = None
columns: Callable[..., Any] | None = None
event_ids: Callable[..., list[str] | None] | None = None
segment_events: Callable[..., list[Any] | None] | None = None
posthog_events: (
    Callable[..., tuple[list[Any], list[tuple[str, object]]] | None] | None
) = None

if c is not None:
    long_digits = c.long_digits
    bodies = c.bodies
    lines = c.lines
    rows = c.rows
    carriers = c.carriers
    index = c.index
    columns = c.columns
    event_ids = c.event_ids
    segment_events = c.segment_events
    posthog_events = c.posthog_events
