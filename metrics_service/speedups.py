"""The C extension _speedups.c, or None when the package was installed without a C
compiler: each caller keeps a Python path that gives the same result, slower."""

from __future__ import annotations

try:
    from . import _speedups as native
except ImportError:
    native = None  # type: ignore[assignment]

__all__ = ["native"]
